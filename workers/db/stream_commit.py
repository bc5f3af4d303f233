"""The primary's side of the live stream: a micro-batch's ticks, offset and gaps in one
transaction; the trade-id gaps re-counted; closed buckets compacted from their landing parts
into the bucket object and registered (see workers/landing/parts.py for the part layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import pyarrow as pa

from workers.core import crashpoint, logs
from workers.core.pg import set_local_utc
from workers.core.sqlfiles import query
from workers.core.ticks import BUCKET_US, iso, to_dt, to_us
from workers.db import trade_ids
from workers.db.bucket_locks import xact_lock
from workers.db.load import BucketLoad, advance_offset, buckets_of, load, mark_digests_stale
from workers.db.load import insert_ticks as load_ticks
from workers.landing.parts import list_parts, read_parts
from workers.landing.rows import bucket_stats
from workers.landing.store import Landing

log = logs.get("stream")
DEFAULT_SOURCE = "stream:binance"  # the stream_source setting's default


@dataclass
class Gap:
    market: str
    symbol: str
    first_missing_id: int
    last_missing_id: int
    after_us: int  # trade time of the last id before the hole
    before_us: int  # trade time of the first id after it

    @property
    def size(self) -> int:
        return self.last_missing_id - self.first_missing_id + 1


def insert_ticks(conn: psycopg.Connection, market: str, symbol: str, table: pa.Table) -> int:
    """A batch's ticks through ON CONFLICT DO NOTHING (call inside a transaction)."""
    if not table.num_rows:
        return 0
    with conn.cursor() as cur:
        set_local_utc(cur)
        mark_digests_stale(cur, buckets_of(market, symbol, table))
        return load_ticks(cur, [((market, symbol), [table])])


def commit_batch(conn: psycopg.Connection, market: str, symbol: str, source: str,
                 table: pa.Table, gaps: list[Gap]) -> int:
    """One transaction: the batch's ticks, the offset (forward only) and the gaps it saw.
    Its buckets' locks are taken shared: stream batches never wait for each other, but not
    while a file ingest or a compaction rewrites one of those buckets."""
    with conn.transaction():
        if table.num_rows:
            us = table.column("event_time").cast(pa.int64()).to_numpy()
            xact_lock(conn, [(market, symbol, int(b)) for b in set(us - us % BUCKET_US)],
                      shared=True)
        n = insert_ticks(conn, market, symbol, _not_held_elsewhere(conn, market, symbol, table))
        if table.num_rows:
            i = table.column("trade_id").to_pylist()
            last = max(range(len(i)), key=i.__getitem__)
            advance_offset(conn, source, market, symbol, i[last],
                           table.column("event_time")[last].as_py())
        for g in gaps:
            conn.execute(
                query(__package__, "record_gap"),
                [source, g.market, g.symbol, g.first_missing_id, g.last_missing_id,
                 to_dt(g.after_us), to_dt(g.before_us)])
    return n


def _not_held_elsewhere(conn: psycopg.Connection, market: str, symbol: str,
                        table: pa.Table) -> pa.Table:
    """The trades whose ids no other bucket holds: a trade id is stored in one bucket only, and
    a file may have stored one of these ids elsewhere first (the stored copy wins, said)."""
    bad = trade_ids.held_elsewhere(conn, market, symbol, table)
    if not bad.any():
        return table
    log.warning("stream trades whose ids another bucket already holds are not stored again "
                "(a trade id is stored in one bucket only; the stored copy wins)",
                market=market, symbol=symbol, trade_ids=table.column("trade_id").filter(
                    pa.array(bad)).to_pylist()[:20], count=int(bad.sum()))
    return table.filter(pa.array(~bad))


def read_offset(conn: psycopg.Connection, source: str, market: str, symbol: str
                ) -> tuple[int, int] | None:
    """(last trade id, its trade time µs) or None."""
    r = conn.execute(query(__package__, "read_offset"), [source, market, symbol]).fetchone()
    if r is None:
        return None
    return r[0], to_us(r[1])


def refresh_gaps(conn: psycopg.Connection, symbol: str | None = None,
                 market: str | None = None) -> list[dict]:
    """Re-count the ids present in every open gap; a gap is filled only when all of them are.
    Returns all gaps (open first)."""
    with conn.transaction():
        conn.execute(query(__package__, "refresh_gaps"), {"symbol": symbol, "market": market})
    cols = ("source", "market", "symbol", "first_missing_id", "last_missing_id", "after_time",
            "before_time", "detected_at", "present_count", "checked_at", "filled_at")
    rows = conn.execute(query(__package__, "list_gaps"), {"symbol": symbol, "market": market})
    return [dict(zip(cols, r, strict=True)) for r in rows]


def compact(conn: psycopg.Connection, landing: Landing, market: str, symbol: str,
            bucket_us: int, source: str, replica=None) -> dict | None:
    """Fold the bucket's parts into its landing object, register it, then delete the parts —
    under the bucket's lock, in one transaction, like every writer of a bucket object."""
    with conn.transaction():
        xact_lock(conn, [(market, symbol, bucket_us)])
        parts = read_parts(landing, market, symbol, bucket_us)
        if not parts:
            return None
        reg = conn.execute(query(__package__, "registered_uri"),
                           [market, symbol, to_dt(bucket_us)]).fetchone()
        incoming = _not_held_elsewhere(conn, market, symbol,
                                       pa.concat_tables([t for _, t in parts]))
        if not incoming.num_rows and reg is None:  # every trade is stored in another bucket
            landing.delete([k for k, _ in parts])
            return None
        w = landing.merge_into(market, symbol, bucket_us, incoming,
                               current_key=landing.key_of(reg[0]) if reg else None,
                               trust_listing=False)
        if w.merge.conflicts:
            log.warning("stream trades conflict with the landed bucket (same id, other "
                        "values); the landed rows win", market=market, symbol=symbol,
                        bucket=iso(bucket_us), conflicts=len(w.merge.conflicts))
        crashpoint.reach("compact_landed")
        bl = BucketLoad(market, symbol, bucket_us, w.merge.table, True, landing.uri(w.key),
                        w.sha256, w.size, bucket_stats(w.merge.table), w.etag)
        load(conn, [bl], source=source)
    crashpoint.reach("compact_committed")
    if w.moved_from:
        landing.delete([w.moved_from])
    if replica is not None:
        replica.submit([(market, symbol, bucket_us)], lambda c: load(c, [bl], source=source),
                       what="compaction")
    landing.delete([k for k, _ in parts])
    return {"bucket": to_dt(bucket_us).isoformat(), "parts": len(parts),
            "rows": w.merge.table.num_rows, "sha256": w.sha256}


def compact_all(conn: psycopg.Connection, landing: Landing, source: str | None = None,
                before_us: int | None = None, replica=None) -> int:
    """Compact every bucket with parts (ending before `before_us` when given). For `restore`:
    after a DR rebuild every accepted trade must be findable under raw/."""
    n = 0
    for (market, symbol, bucket), _ in sorted(list_parts(landing).items()):
        if before_us is not None and bucket + BUCKET_US > before_us:
            continue
        if compact(conn, landing, market, symbol, bucket, source or DEFAULT_SOURCE, replica):
            n += 1
    return n
