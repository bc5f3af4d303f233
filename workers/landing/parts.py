"""Landing for the live stream: small per-batch part objects, compacted into the bucket object.

A micro-batch is accepted once its parts are in landing:

    stream/<SYMBOL>/<YYYY-MM-DD>/<HHMM>/<first id>-<last id>.parquet   (one per bucket it touches)

then its ticks and the stream offset commit on the primary in one transaction. Once a bucket is
closed (a trade `grace` past its end has been committed) its parts are compacted: merged with the
bucket's object `raw/<SYMBOL>/<date>/<HHMM>.parquet` (union, dedup on trade id — the same object a
file ingest writes), the object written, registered in `landing.raw_blobs_5m` with its aggregate,
and only then are the parts deleted. Every step is idempotent, so a crash anywhere is repaired by
running it again: same parts, same merged bytes, same SHA-256.

Why parts: rewriting the bucket object on every one-second batch would store hundreds of
versions per bucket in the versioned landing bucket; parts are written once and deleted.
"""

from __future__ import annotations

import pyarrow as pa

from workers.core.ticks import to_dt, to_us
from workers.landing.store import Landing

PREFIX = "stream"


def part_prefix(symbol: str, bucket_us: int) -> str:
    t = to_dt(bucket_us)
    return f"{PREFIX}/{symbol}/{t:%Y-%m-%d}/{t:%H%M}/"


def part_key(symbol: str, bucket_us: int, first_id: int, last_id: int) -> str:
    return f"{part_prefix(symbol, bucket_us)}{first_id:020d}-{last_id:020d}.parquet"


def parse_part_key(key: str) -> tuple[str, int, int, int]:
    """(symbol, bucket µs, first id, last id)"""
    from datetime import datetime

    _, symbol, day, hhmm, name = key.split("/")
    t = datetime.strptime(f"{day} {hhmm}", "%Y-%m-%d %H%M")
    first, last = name.removesuffix(".parquet").split("-")
    return symbol, to_us(t), int(first), int(last)


def list_parts(landing: Landing, symbol: str | None = None) -> dict[tuple[str, int], list[str]]:
    """{(symbol, bucket): [part keys in id order]} of parts not compacted yet."""
    out: dict[tuple[str, int], list[str]] = {}
    for key in landing.keys(f"{PREFIX}/{symbol}/" if symbol else f"{PREFIX}/"):
        sym, bucket, _, _ = parse_part_key(key)
        out.setdefault((sym, bucket), []).append(key)
    return out


def read_part(landing: Landing, key: str) -> pa.Table:
    """A part, checked against the checksum stored with it."""
    return landing.read_verified(key).table


def read_parts(landing: Landing, symbol: str, bucket_us: int) -> list[tuple[str, pa.Table]]:
    return [(k, read_part(landing, k)) for k in landing.keys(part_prefix(symbol, bucket_us))]


def write_part(landing: Landing, symbol: str, bucket_us: int, table: pa.Table) -> str:
    ids = table.column("trade_id")
    key = part_key(symbol, bucket_us, ids[0].as_py(), ids[-1].as_py())
    landing.write(key, table, symbol)
    return key
