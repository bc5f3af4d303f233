"""The primary's side of the live stream: a micro-batch's ticks, offset and gaps in one
transaction; the trade-id gaps re-counted; closed buckets compacted from their landing parts
into the bucket object and registered (see workers/landing/parts.py for the part layout).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psycopg
import pyarrow as pa

from workers.core import crashpoint, logs
from workers.db.load import BucketLoad, _copy, _csv, advance_offset, load, ts
from workers.landing.parts import CorruptPart, list_parts, read_parts
from workers.landing.store import BUCKET_US, Landing, bucket_stats, merge, object_key

log = logs.get("stream")
DEFAULT_SOURCE = "stream:binance"  # the stream_source setting's default


@dataclass
class Gap:
    symbol: str
    first_missing_id: int
    last_missing_id: int
    after_us: int  # trade time of the last id before the hole
    before_us: int  # trade time of the first id after it

    @property
    def size(self) -> int:
        return self.last_missing_id - self.first_missing_id + 1


def insert_ticks(conn: psycopg.Connection, symbol: str, table: pa.Table) -> int:
    """Ticks through a staging table and ON CONFLICT DO NOTHING (call inside a transaction)."""
    if not table.num_rows:
        return 0
    with conn.cursor() as cur:
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS stream_stage "
                    "(LIKE market_data.btc_ticks INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        _copy(cur, "stream_stage", _csv(symbol, [table]))
        cur.execute("INSERT INTO market_data.btc_ticks SELECT * FROM stream_stage "
                    "ON CONFLICT (bucket_5m, symbol, trade_id) DO NOTHING")
        return cur.rowcount


def commit_batch(conn: psycopg.Connection, symbol: str, source: str, table: pa.Table,
                 gaps: list[Gap]) -> int:
    """One transaction: the batch's ticks, the offset (forward only) and the gaps it saw."""
    with conn.transaction():
        n = insert_ticks(conn, symbol, table)
        if table.num_rows:
            i = table.column("trade_id").to_pylist()
            last = max(range(len(i)), key=i.__getitem__)
            advance_offset(conn, source, symbol, i[last],
                           table.column("event_time")[last].as_py())
        for g in gaps:
            conn.execute(
                "INSERT INTO ingestion.stream_gaps (source, symbol, first_missing_id, "
                "last_missing_id, after_time, before_time) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [source, g.symbol, g.first_missing_id, g.last_missing_id, ts(g.after_us),
                 ts(g.before_us)])
    return n


def read_offset(conn: psycopg.Connection, source: str, symbol: str) -> tuple[int, int] | None:
    """(last trade id, its trade time µs) or None."""
    r = conn.execute("SELECT last_trade_id, last_event_time FROM ingestion.stream_offsets "
                     "WHERE source = %s AND symbol = %s", [source, symbol]).fetchone()
    if r is None:
        return None
    return r[0], int(r[1].timestamp() * 1_000_000)


REFRESH_GAPS = """
UPDATE ingestion.stream_gaps g
SET present_count = c.n, checked_at = now(),
    filled_at = CASE WHEN c.n = g.last_missing_id - g.first_missing_id + 1 THEN now() END
FROM (
    SELECT o.source, o.symbol, o.first_missing_id, (
        SELECT count(*) FROM market_data.btc_ticks t
        WHERE t.symbol = o.symbol
          AND t.bucket_5m >= date_bin('5 minutes', o.after_time, TIMESTAMPTZ '2000-01-01 00:00+00')
          AND t.bucket_5m <= date_bin('5 minutes', o.before_time, TIMESTAMPTZ '2000-01-01 00:00+00')
          AND t.trade_id BETWEEN o.first_missing_id AND o.last_missing_id) AS n
    FROM ingestion.stream_gaps o
    WHERE o.filled_at IS NULL AND (%(symbol)s::text IS NULL OR o.symbol = %(symbol)s)
) c
WHERE g.source = c.source AND g.symbol = c.symbol AND g.first_missing_id = c.first_missing_id
"""


def refresh_gaps(conn: psycopg.Connection, symbol: str | None = None) -> list[dict]:
    """Re-count the ids present in every open gap; a gap is filled only when all of them are.
    Returns all gaps (open first)."""
    with conn.transaction():
        conn.execute(REFRESH_GAPS, {"symbol": symbol})
    cols = ("source", "symbol", "first_missing_id", "last_missing_id", "after_time",
            "before_time", "detected_at", "present_count", "checked_at", "filled_at")
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM ingestion.stream_gaps "
        "WHERE (%(symbol)s::text IS NULL OR symbol = %(symbol)s) "
        "ORDER BY filled_at IS NOT NULL, symbol, first_missing_id", {"symbol": symbol})
    return [dict(zip(cols, r, strict=True)) for r in rows]


def compact(conn: psycopg.Connection, landing: Landing, symbol: str, bucket_us: int,
            source: str, replica=None) -> dict | None:
    """Fold the bucket's parts into its landing object, register it, then delete the parts."""
    parts = read_parts(landing, symbol, bucket_us)
    if not parts:
        return None
    key = object_key(symbol, bucket_us)
    existing = digest = None
    with contextlib.suppress(landing.s3.exceptions.NoSuchKey):
        existing, digest, meta = landing.read(key)
    if existing is not None and meta.get("sha256") != digest:
        raise CorruptPart(f"{landing.uri(key)}: SHA-256 mismatch: stored {meta.get('sha256')}, "
                          f"object is {digest}")
    m = merge(existing, pa.concat_tables([t for _, t in parts]))
    if m.conflicts:
        log.warning("stream trades conflict with the landed bucket (same id, other values); "
                    "the landed rows win", symbol=symbol, bucket=ts(bucket_us).isoformat(),
                    conflicts=len(m.conflicts))
    if existing is None or m.new_rows.num_rows:
        digest, size = landing.write(key, m.table, symbol)
    else:
        size = landing.size(key)
    crashpoint.reach("compact_landed")
    bl = BucketLoad(symbol, bucket_us, m.table, True, landing.uri(key), digest, size,
                    bucket_stats(m.table))
    load(conn, [bl], source=source)
    crashpoint.reach("compact_committed")
    if replica is not None:
        replica.submit([(symbol, bucket_us)], lambda c: load(c, [bl], source=source),
                       what="compaction")
    keys = [k for k, _ in parts]
    for i in range(0, len(keys), 1000):
        landing.s3.delete_objects(Bucket=landing.bucket, Delete={
            "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
    return {"bucket": ts(bucket_us).isoformat(), "parts": len(keys), "rows": m.table.num_rows,
            "sha256": digest}


def compact_all(conn: psycopg.Connection, landing: Landing, source: str | None = None,
                before_us: int | None = None, replica=None) -> int:
    """Compact every bucket with parts (ending before `before_us` when given). For `restore`:
    after a DR rebuild every accepted trade must be findable under raw/."""
    n = 0
    for (symbol, bucket), _ in sorted(list_parts(landing).items()):
        if before_us is not None and bucket + BUCKET_US > before_us:
            continue
        if compact(conn, landing, symbol, bucket, source or DEFAULT_SOURCE, replica):
            n += 1
    return n
