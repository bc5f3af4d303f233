"""The ivfflat index lifecycle and query-time probes (pgvector's guidance, as rules).

* Below MIN_ROWS no index: exact search is fast there, and ivfflat trained on few rows has
  poor recall.
* lists = rows / 1000 up to 1M rows, sqrt(rows) above (the data model's lists = 200 is this
  rule at 200k windows); at least 1.
* Rebuild when the table has at least doubled since the last build (new index, then swap).
* probes ~ sqrt(lists), overridable per query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import psycopg

MIN_ROWS = 10_000


def lists_for(rows: int) -> int:
    return max(1, rows // 1000 if rows <= 1_000_000 else int(math.sqrt(rows)))


def probes_for(lists: int) -> int:
    return max(1, min(lists, round(math.sqrt(lists))))


@dataclass
class IndexState:
    rows: int
    index: str | None
    built_rows: int | None
    lists: int | None
    action: str  # "none (below threshold)" | "kept" | "built" | "rebuilt"


def ensure(conn: psycopg.Connection, *, min_rows: int = MIN_ROWS) -> IndexState:
    rows = conn.execute("SELECT count(*) FROM signals.btc_embeddings").fetchone()[0]
    last = current(conn)
    if last is None and rows < min_rows:
        return IndexState(rows, None, None, None, "none (below threshold)")
    if last is not None and rows < 2 * last[1]:
        return IndexState(rows, last[0], last[1], last[2], "kept")
    lists = lists_for(rows)
    name = conn.execute("SELECT signals.build_embedding_index(%s)", [lists]).fetchone()[0]
    if not conn.autocommit:
        conn.commit()
    return IndexState(rows, name, rows, lists, "rebuilt" if last else "built")


def current(conn: psycopg.Connection) -> tuple[str, int, int] | None:
    """(index name, rows at build, lists) of the index in use, if any."""
    return conn.execute(
        "SELECT b.index_name, b.rows, b.lists FROM signals.vector_index_builds b "
        "JOIN pg_class c ON c.relname = b.index_name "
        "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'signals' "
        "ORDER BY b.built_at DESC LIMIT 1").fetchone()
