"""A trade id is stored in one bucket only: which incoming rows would put one in a second bucket.

A trade's identity is (market, symbol, trade id); its bucket follows from its event time. A row
whose id is already stored in another bucket (same id, another time: a conflicting duplicate),
or that carries an id an earlier row of the same input places in another bucket, is quarantined
instead of stored. Which copy keeps the id: the stored one, else the first in input order.

Stored means committed in `market_data.btc_ticks`. The candidates are the buckets whose trade-id
range (aggregate, or registry for a bucket without one) overlaps the incoming ids — every bucket,
including the ones this flush writes: a row is compared with every bucket except its own (its own
bucket's copy is the landing merge's business: duplicate or conflict by value).

Guarantee, with the caller holding `bucket_locks.id_locks` over the ids from this check until its
load commits (the file ingest does): whatever mix of buckets flushes write, within a file, across
files, runs and concurrent ingests, no id is committed to two buckets by them. Buckets holding
ticks without a registry row — the live stream's, committed before their compaction registers
them — are candidates too (`unregistered`, found once per run: their ranges are read from their
ticks). The live stream checks its trades too (`held_elsewhere`, at commit and at compaction):
one whose id a file stored in another bucket before is not stored again. Not covered: a stream
bucket first written while a file ingest is under way, and the stream racing a file ingest over
the same ids (the stream takes no id locks); objects changed outside tickstack's writers.
"""

from __future__ import annotations

import numpy as np
import psycopg
import pyarrow as pa

from workers.core.sqlfiles import query
from workers.core.ticks import BUCKET_US, to_us


def unregistered(conn: psycopg.Connection, market: str, symbol: str) -> list:
    """Buckets holding ticks but no registry row (the live stream's, not compacted yet)."""
    return [b for (b,) in conn.execute(query(__package__, "unregistered_buckets"),
                                       {"market": market, "symbol": symbol})]


def stored_elsewhere(conn: psycopg.Connection, market: str, symbol: str, ids: np.ndarray,
                     owner: np.ndarray, unregistered_buckets: list = ()) -> np.ndarray:
    """Rows (id, bucket) whose id is stored in some bucket other than their own (and not in
    their own): True where the row would be a second copy."""
    bad = np.zeros(len(ids), dtype=bool)
    if not len(ids):
        return bad
    span = {"market": market, "symbol": symbol, "lo": int(ids.min()), "hi": int(ids.max())}
    cands = conn.execute(query(__package__, "buckets_by_trade_ids"), span).fetchall()
    if unregistered_buckets:
        cands += conn.execute(query(__package__, "ranges_of_buckets"), {
            **span, "buckets": list(unregistered_buckets)}).fetchall()
    held_in: dict[int, set[int]] = {}  # id -> the buckets holding it (of those asked)
    for bucket, first, last in cands:
        b = to_us(bucket)
        ask = (ids >= first) & (ids <= last) & (owner != b)
        if not ask.any():
            continue
        for (tid,) in conn.execute(query(__package__, "ids_in_bucket"), [
                market, symbol, bucket, np.unique(ids[ask]).tolist()]):
            held_in.setdefault(tid, set()).add(b)
    if held_in:
        for i in np.flatnonzero(np.isin(ids, np.fromiter(held_in, dtype=np.int64))):
            bad[i] = int(owner[i]) not in held_in[int(ids[i])]
    return bad


def later_copies(ids: np.ndarray, pos: np.ndarray, owner: np.ndarray,
                 among: np.ndarray) -> np.ndarray:
    """Of the rows `among` (a mask), those whose id an earlier row (in input order) places in
    another bucket. Same id, same bucket is left to the merge (duplicate or conflict)."""
    bad = np.zeros(len(ids), dtype=bool)
    idx = np.flatnonzero(among)
    if not len(idx):
        return bad
    sub_ids, sub_own = ids[idx], owner[idx]
    order = np.lexsort((pos[idx], sub_ids))
    sid, sown = sub_ids[order], sub_own[order]
    first = np.r_[True, sid[1:] != sid[:-1]]
    keeper = np.maximum.accumulate(np.where(first, np.arange(len(sid)), 0))
    bad[idx[order[~first & (sown != sown[keeper])]]] = True
    return bad


def conflicting(conn: psycopg.Connection, market: str, symbol: str, ids: np.ndarray,
                pos: np.ndarray, owner: np.ndarray, unregistered_buckets: list = ()
                ) -> np.ndarray:
    """Rows that would store a trade id in a second bucket: stored copies win, then the first
    copy in input order. Call holding the ids' locks (bucket_locks.id_locks), with every
    earlier load of the same writer that may hold these ids committed."""
    bad = stored_elsewhere(conn, market, symbol, ids, owner, unregistered_buckets)
    return bad | later_copies(ids, pos, owner, ~bad)



def held_elsewhere(conn: psycopg.Connection, market: str, symbol: str,
                   table: pa.Table) -> np.ndarray:
    """Of a table of trades (the live stream's), those whose id another bucket already holds:
    True where storing the row would make a second copy (the stored one wins)."""
    if not table.num_rows:
        return np.zeros(0, dtype=bool)
    us = table.column("event_time").cast(pa.int64()).to_numpy()
    return stored_elsewhere(conn, market, symbol, table.column("trade_id").to_numpy(),
                            us - us % BUCKET_US)
