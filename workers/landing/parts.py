"""Landing for the live stream: small per-batch part objects, compacted into the bucket object.

A micro-batch is accepted once its parts are in landing:

    stream/<market>/<SYMBOL>/<YYYY-MM-DD>/<HHMM>/<first id>-<last id>.parquet  (per bucket)

then its ticks and the stream offset commit on the primary in one transaction. Once a bucket is
closed (a trade `grace` past its end has been committed) its parts are compacted: merged with
the bucket's object `raw/<market>/<SYMBOL>/<date>/<HHMM>.parquet` (union, dedup on trade id —
the same object a file ingest writes, under the same bucket lock), the object written,
registered in `landing.raw_blobs_5m` with its aggregate, and only then are the parts deleted.
Every step is idempotent, so a crash anywhere is repaired by running it again: same parts, same
merged bytes, same SHA-256.

Why parts: rewriting the bucket object on every one-second batch would store hundreds of
versions per bucket in the versioned landing bucket; parts are written once and deleted.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from workers.core.markets import MARKETS, SYMBOL_PATTERN, BucketId
from workers.core.ticks import printable, to_dt, to_us
from workers.landing.store import Landing

PREFIX = "stream"


def part_prefix(market: str, symbol: str, bucket_us: int) -> str:
    t = to_dt(bucket_us)
    return f"{PREFIX}/{market}/{symbol}/{t:%Y-%m-%d}/{t:%H%M}/"


def part_key(market: str, symbol: str, bucket_us: int, first_id: int, last_id: int) -> str:
    return f"{part_prefix(market, symbol, bucket_us)}{first_id:020d}-{last_id:020d}.parquet"


def parse_part_key(key: str) -> tuple[str, str, int, int, int]:
    """(market, symbol, bucket µs, first id, last id); parts from before markets are spot.
    ValueError when the key is not a part's."""
    parts = key.split("/")
    if parts[0] != PREFIX or len(parts) not in (5, 6):
        raise ValueError(f"not a stream part key: {printable(key)}")
    market = parts[1] if len(parts) == 6 else "spot"
    symbol, day, hhmm, name = parts[-4:]
    if market not in MARKETS or not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"not a stream part key (market or symbol): {printable(key)}")
    try:
        t = datetime.strptime(f"{day} {hhmm}", "%Y-%m-%d %H%M")
        first, last = (int(x) for x in name.removesuffix(".parquet").split("-"))
    except ValueError:
        raise ValueError(f"not a stream part key: {printable(key)}") from None
    return market, symbol, to_us(t), first, last


def list_parts(landing: Landing, market: str | None = None, symbol: str | None = None
               ) -> dict[BucketId, list[str]]:
    """{(market, symbol, bucket): [part keys in id order]} of parts not compacted yet (keys that
    are not parts are skipped: the stream never wrote them)."""
    out: dict[tuple[str, str, int], list[str]] = {}
    for key in landing.keys(f"{PREFIX}/"):
        try:
            m, sym, bucket, _, _ = parse_part_key(key)
        except ValueError:
            continue
        if (market is None or m == market) and (symbol is None or sym == symbol):
            out.setdefault(BucketId(m, sym, bucket), []).append(key)
    return out


def read_part(landing: Landing, key: str) -> pa.Table:
    """A part, checked against the checksum stored with it."""
    return landing.read_verified(key).table


def read_parts(landing: Landing, market: str, symbol: str, bucket_us: int
               ) -> list[tuple[str, pa.Table]]:
    keys = landing.keys(part_prefix(market, symbol, bucket_us))
    if market == "spot":  # parts written before markets were part of the key
        t = to_dt(bucket_us)
        keys += landing.keys(f"{PREFIX}/{symbol}/{t:%Y-%m-%d}/{t:%H%M}/")
    return [(k, read_part(landing, k)) for k in keys]


def write_part(landing: Landing, market: str, symbol: str, bucket_us: int,
               table: pa.Table) -> str:
    ids = table.column("trade_id")
    key = part_key(market, symbol, bucket_us, ids[0].as_py(), ids[-1].as_py())
    landing.write(key, table, symbol, market=market)
    return key
