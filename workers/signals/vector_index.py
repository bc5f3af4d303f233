"""The ivfflat index lifecycle and query-time probes, as rules measured by bench/vectors.py.

* Below MIN_ROWS no index: exact search is fast there, and ivfflat trained on few rows has
  poor recall.
* The index is over `feature_vector::halfvec(256)` (sql/017): half the bytes per probed row
  for the same neighbours; the query re-ranks its candidates by the exact float distance.
* lists = sqrt(rows) at every size. Query cost is about lists + probes * rows / lists row
  distances, so more, smaller lists pay while the probes needed grow slowly: at 100k generated
  windows sqrt (316 lists) answered at recall@10 0.985 in about half the time of rows/1000
  (100 lists). Build cost bounds it from above: pgvector's k-means trains on 50 rows per list,
  so it grows with lists squared (1M rows: 1000 lists built in 2-3 min, 2000 lists in 8).
* probes = 2.7 ln(lists), rounded up: the probes recall@10 >= 0.985 needed on generated
  windows grew about logarithmically with lists (100 lists: 9; 316: 14-16; 1000 at 1M rows:
  18), where sqrt(lists) (pgvector's starting point) over-probes large indexes (32 at 1000
  lists: recall 0.996 at 1.7x the time).
* Rebuild when the table has at least doubled since the last build, or when the index in use
  is not the current kind (a vector(256) index from before sql/017): build new, then swap.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import psycopg

from workers.core import logs
from workers.core.sqlfiles import query as query_sql

MIN_ROWS = 10_000
KIND = "halfvec"  # what build_embedding_index builds; the query must match it to use it

log = logs.get("vector_index")


def lists_for(rows: int) -> int:
    return max(1, round(math.sqrt(rows)))


def probes_for(lists: int) -> int:
    return max(1, min(lists, math.ceil(2.7 * math.log(lists))))


@dataclass(frozen=True)
class Index:
    name: str
    rows: int  # rows when built
    lists: int
    kind: str  # "halfvec" | "vector" (before sql/017)


@dataclass
class IndexState:
    rows: int
    index: str | None
    built_rows: int | None
    lists: int | None
    action: str  # "none (below threshold)" | "kept" | "built" | "rebuilt"
    seconds: float = 0.0  # this run's build, if any


def current(conn: psycopg.Connection) -> Index | None:
    """The index in use (the newest recorded build that still exists), if any."""
    row = conn.execute(
        "SELECT b.index_name, b.rows, b.lists, b.kind FROM signals.vector_index_builds b "
        "JOIN pg_class c ON c.relname = b.index_name "
        "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'signals' "
        "ORDER BY b.built_at DESC, b.index_name DESC LIMIT 1").fetchone()
    return Index(*row) if row else None


def ensure(conn: psycopg.Connection, *, min_rows: int = MIN_ROWS) -> IndexState:
    """Apply the lifecycle rule: build, rebuild (new, then swap) or keep."""
    rows = conn.execute("SELECT count(*) FROM signals.btc_embeddings").fetchone()[0]
    last = current(conn)
    if last is None and rows < min_rows:
        return IndexState(rows, None, None, None, "none (below threshold)")
    if last is not None and last.kind == KIND and rows < 2 * last.rows:
        drop_replaced(conn)  # leftovers of a swap that timed out earlier
        prewarm(conn, last.name)  # after a restart its buffers are gone; cheap when resident
        return IndexState(rows, last.name, last.rows, last.lists, "kept")
    state = rebuild(conn, rows=rows, expected=last)
    if state.index:
        prewarm(conn, state.index)
    return state


def prewarm(conn: psycopg.Connection, index: str) -> int | None:
    """Load the index into shared_buffers when it takes at most half of them (the table's hot
    pages need the rest); blocks loaded, or None (too big: a warning says what to raise; or no
    pg_prewarm on this server). Queries then read probed lists from memory, not the OS cache."""
    if conn.execute("SELECT to_regproc('public.pg_prewarm') IS NULL").fetchone()[0]:
        return None
    row = conn.execute(query_sql(__package__, "prewarm_index"), {"index": index}).fetchone()
    if row is None:
        return None
    size, shared, blocks = row
    if blocks is None:
        log.warning("the vector index is more than half of shared_buffers: queries read its "
                    "lists from the OS cache (slower, p95 about 2x); raise shared_buffers "
                    "(stack key primarySharedBuffers) to at least twice the index",
                    index=index, index_mb=round(size / 2**20), shared_buffers_mb=round(
                        shared / 2**20))
    return blocks


def rebuild(conn: psycopg.Connection, *, rows: int | None = None,
            expected: Index | None = None) -> IndexState:
    """Build a new index for the table as it is now and swap it in (also: a forced rebuild)."""
    if rows is None:
        rows = conn.execute("SELECT count(*) FROM signals.btc_embeddings").fetchone()[0]
        expected = current(conn)
    lists = lists_for(rows)
    t0 = time.monotonic()
    name = conn.execute("SELECT signals.build_embedding_index(%s, %s)",
                        [lists, expected.name if expected else None]).fetchone()[0]
    if not conn.autocommit:
        conn.commit()
    seconds = time.monotonic() - t0
    if name is None:  # another worker swapped an index in meanwhile: that one is current
        drop_replaced(conn)
        now = current(conn)
        log.info("index built by another worker meanwhile", index=now.name if now else None)
        return IndexState(rows, now.name if now else None, now.rows if now else None,
                          now.lists if now else None, "kept")
    drop_replaced(conn)
    log.info("index built", index=name, rows=rows, lists=lists, seconds=round(seconds, 1),
             replaced=expected.name if expected else None)
    return IndexState(rows, name, rows, lists, "rebuilt" if expected else "built", seconds)


def drop_replaced(conn: psycopg.Connection, *, attempts: int = 5) -> int:
    """Drop the indexes a swap replaced. DROP INDEX waits for the table's in-flight readers
    and new readers queue behind it, so each try gives up after the function's lock_timeout
    (1 s), or at once while a build holds the builders' lock; after `attempts` tries the old
    index stays until the next run (it costs writes and space, not answers)."""
    for attempt in range(attempts):
        try:
            with conn.transaction():
                n = conn.execute("SELECT signals.drop_replaced_embedding_indexes()").fetchone()[0]
            if n is not None:
                return n
        except psycopg.errors.LockNotAvailable:
            pass
        time.sleep(0.2 * (attempt + 1))
    log.warning("old index not dropped yet: readers held the table; the next run retries",
                attempts=attempts)
    return 0
