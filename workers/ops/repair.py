"""`workers repair [--check] [--since T]`: give the primary back what landing holds and it lost.

Landing is the source of truth; the primary can still lose rows of it — a DELETE by a login
that could (before sql/021), by hand, by a tool outside tickstack. `replicate --check` sees
such a primary as differing from the replica, but replicate rebuilds only the replica. This
repairs the primary, as the ingest login (no DELETE needed: missing rows are inserted):

1. refresh the primary's tick digests (workers/replica/digests.py: stale ones, or all of them
   after a change no tickstack writer marked — which a DELETE outside tickstack is);
2. compare every registered bucket (from `since`) with its registry row: the object's row
   count against the bucket's tick count, and whether its 5-minute aggregate row is there.
   Buckets retention removed on purpose are not losses: ticks of a bucket below the newest
   cut-off retention applied to the table (ops.retention_horizon) with none left, aggregates
   below the aggregate's;
3. re-load the buckets that fall short from their landing objects (the one replay,
   workers/db/ingest.py: SHA-256 checked against the registry, under each bucket's lock, ticks
   through ON CONFLICT DO NOTHING, registry and aggregate upserted, digests marked);
4. refresh and compare again: a bucket still short fails the run (exit 1).

Rows the primary holds beyond the landed object (more ticks than the registry counts) are
reported, never changed: removing rows needs DELETE, which the ingest login does not have, and
they may be stream trades whose parts are not compacted yet. A bucket with the right count but
other values is not detected here (the digest is not computed from landing); `replicate
--check` reports it as differing from the replica.

Idempotent: a second run finds nothing to do. Safe beside every other writer: loads take the
buckets' locks as ingest does and only add rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from workers.core import logs
from workers.core.pg import require_autocommit
from workers.core.sqlfiles import query
from workers.core.ticks import iso, to_us
from workers.db.ingest import replay
from workers.landing.store import Landing
from workers.replica import digests

log = logs.get("repair")

TICKS, OHLCV = "market_data.btc_ticks", "market_data.btc_ohlcv_5m"
Key = tuple[str, str, int]  # (market, symbol, bucket µs)


@dataclass
class Bucket:
    key: Key
    uri: str
    landed: int  # rows of the landing object (the registry's count)
    held: int  # ticks on the primary
    stale: bool  # being written while compared
    has_ohlcv: bool

    def describe(self) -> str:
        name = f"{self.key[0]} {self.key[1]} {iso(self.key[2])}"
        agg = "" if self.has_ohlcv else "; aggregate row missing"
        if self.held < self.landed:
            return f"{name}: {self.held} of {self.landed} landed ticks on the primary{agg}"
        if self.held > self.landed:
            return (f"{name}: {self.held} ticks on the primary, {self.landed} in the landed "
                    f"object (left as they are){agg}")
        return f"{name}: aggregate row missing"


@dataclass
class Findings:
    short: list[Bucket] = field(default_factory=list)  # ticks or the aggregate to re-load
    extra: list[Bucket] = field(default_factory=list)  # more on the primary than landed
    retained: int = 0  # buckets retention removed on purpose
    being_written: int = 0


@dataclass
class Result:
    check_only: bool
    before: Findings
    after: Findings | None = None
    repaired: int = 0
    rows_inserted: int = 0
    seconds: float = 0.0

    @property
    def remaining(self) -> list[Bucket]:
        return (self.before if self.after is None else self.after).short

    @property
    def changed(self) -> bool:
        return bool(self.rows_inserted or self.repaired)

    @property
    def ok(self) -> bool:
        return not self.remaining

    def summary(self) -> str:
        b = self.before
        found = (f"{len(b.short)} bucket(s) of the primary fall short of landing"
                 if b.short else "the primary holds every landed bucket")
        if self.check_only:
            return found
        if not b.short:
            return found + ", nothing to repair"
        tail = (f"; {len(self.remaining)} still short" if self.remaining else
                "; now equal to landing")
        return (f"{found}: re-loaded {self.repaired} from landing ({self.rows_inserted:,} "
                f"ticks inserted){tail}")

    def details(self) -> list[str]:
        out = [f"short: {b.describe()}" for b in self.before.short[:50]]
        if len(self.before.short) > 50:
            out.append(f"… and {len(self.before.short) - 50} more")
        last = self.after or self.before
        out += [f"extra: {b.describe()}" for b in last.extra[:20]]
        if last.retained:
            out.append(f"{last.retained} registered bucket(s) below retention's cut-off "
                       "(removed on purpose, not re-loaded)")
        if last.being_written:
            out.append(f"{last.being_written} bucket(s) being written while compared "
                       "(not compared; run again)")
        if self.after is not None:
            out += [f"still short: {b.describe()}" for b in self.after.short[:50]]
        return out

    def as_dict(self) -> dict:
        def f(x: Findings | None) -> dict | None:
            return None if x is None else {
                "short": [b.describe() for b in x.short], "extra": [b.describe() for b in x.extra],
                "retained": x.retained, "being_written": x.being_written}

        return {"check_only": self.check_only, "before": f(self.before), "after": f(self.after),
                "repaired": self.repaired, "rows_inserted": self.rows_inserted,
                "changed": self.changed, "ok": self.ok, "did": self.summary(),
                "seconds": round(self.seconds, 3)}


def find(conn: psycopg.Connection, since: datetime | None = None) -> Findings:
    """Refresh the primary's digests, then hold every registered bucket against landing."""
    digests.refresh(conn, since)
    tick_cut, ohlcv_cut = conn.execute(
        "SELECT ops.retention_horizon(%s), ops.retention_horizon(%s)", [TICKS, OHLCV]).fetchone()
    out = Findings()
    for market, symbol, bucket, uri, landed, held, stale, has_ohlcv in conn.execute(
            query(__package__, "repair_compare"), {"since": since}):
        b = Bucket((market, symbol, to_us(bucket)), uri, landed, held, stale, has_ohlcv)
        if stale:
            out.being_written += 1
            continue
        ticks_gone = held == 0 and tick_cut is not None and bucket < tick_cut
        ohlcv_gone = not has_ohlcv and ohlcv_cut is not None and bucket < ohlcv_cut
        if ticks_gone or (held == landed and ohlcv_gone):
            out.retained += 1
        elif held < landed or (held == landed and not has_ohlcv):
            out.short.append(b)
        elif held > landed:
            out.extra.append(b)
    return out


def run(conn: psycopg.Connection, landing: Landing, *, check_only: bool = False,
        since: datetime | None = None) -> Result:
    """`conn`: the primary, as the ingest login (autocommit)."""
    require_autocommit(conn, "repair")
    t0 = time.monotonic()
    res = Result(check_only, find(conn, since))
    if not check_only and res.before.short:
        keys = [landing.key_of(b.uri) for b in res.before.short]
        s = replay(conn, landing, keys, source="repair")
        res.repaired, res.rows_inserted = s.buckets_unchanged, s.inserted
        res.after = find(conn, since)
        # A bucket of flagged trades only (insurance fund, ADL) has no aggregate to re-load.
        res.after.short = [b for b in res.after.short if b.held != b.landed]
        log.info("primary repaired from landing", buckets=res.repaired,
                 ticks=res.rows_inserted, still_short=len(res.after.short))
    res.seconds = time.monotonic() - t0
    return res
