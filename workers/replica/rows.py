"""What the replica holds besides ticks, compared the way ticks are: the landing registry
(`landing.raw_blobs_5m`) and the 5-minute aggregate (`market_data.btc_ohlcv_5m`), each one row per
bucket, digested per UTC day on the fly (a scan of rows-per-bucket, never of ticks), drilled into
per bucket for the days that differ; and `state`, what a list of buckets holds right now (tick
digests as stored, row digests from the rows), for re-checking a difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from workers.core.markets import BucketId
from workers.core.pg import set_local_utc
from workers.core.sqlfiles import query
from workers.core.ticks import to_dt, to_us

Key = BucketId
ROW_KINDS = ("registry", "ohlcv")
KINDS = ("ticks", *ROW_KINDS)


@dataclass(frozen=True)
class Held:
    """One server's copy of one bucket: ticks (count, digest) — (None, None) while the stored
    digest is stale — and the registry and aggregate row digests; None: it holds none."""

    ticks: tuple[int | None, int | None] | None = None
    registry: str | None = None
    ohlcv: str | None = None

    @property
    def stale(self) -> bool:
        return self.ticks is not None and self.ticks[0] is None

    def of(self, kind: str):
        return getattr(self, kind)


NOTHING = Held()


def days(conn: psycopg.Connection, since: datetime | None = None
         ) -> dict[str, dict[tuple, tuple[int, str]]]:
    """{kind: {(market, symbol, day): (rows, digest)}} for the registry and the aggregate."""
    out = {}
    with conn.transaction():
        set_local_utc(conn)
        for kind in ROW_KINDS:
            rows = conn.execute(query(__package__, f"{kind}_days"), {"since": since}).fetchall()
            out[kind] = {(m, s, d): (n, h) for m, s, d, n, h in rows}
    return out


def buckets(conn: psycopg.Connection, which: list[tuple], since: datetime | None = None
            ) -> dict[str, dict[Key, str]]:
    """{kind: {bucket: row digest}} of these (market, symbol, day)s."""
    out: dict[str, dict[Key, str]] = {k: {} for k in ROW_KINDS}
    if not which:
        return out
    args = [[m for m, _, _ in which], [s for _, s, _ in which], [d for _, _, d in which],
            since, since]
    with conn.transaction():
        set_local_utc(conn)
        for kind in ROW_KINDS:
            out[kind] = {(m, s, to_us(b)): h for m, s, b, h in
                         conn.execute(query(__package__, f"{kind}_buckets"), args)}
    return out


def state(conn: psycopg.Connection, keys: list[Key]) -> dict[Key, Held]:
    """What these buckets hold now (one statement, one snapshot): stored tick digests (refresh
    the stale ones first; one still stale reads (None, None)) and the row digests."""
    if not keys:
        return {}
    with conn.transaction():
        set_local_utc(conn)
        rows = conn.execute(query(__package__, "bucket_state"), [
            [k[0] for k in keys], [k[1] for k in keys], [to_dt(k[2]) for k in keys]]).fetchall()
    return {(m, s, to_us(b)): Held((n, x) if has else None, r, o)
            for m, s, b, has, n, x, r, o in rows}
