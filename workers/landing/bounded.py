"""Merging incoming rows into a large bucket object with memory bounded by the incoming rows.

`rows.merge` holds the whole bucket several times over (existing + incoming, sorted, taken);
for one dense bucket (600k trades in five minutes) that made the ingest's memory grow with the
bucket. Here the existing object (sorted by trade id, as every writer stores it) is read one row
group at a time and merged with the incoming rows (sorted by trade id) as a merge-join, the
result streamed into the same bytes `to_parquet` would give, and the registry's statistics
accumulated on the way. Same outcome row for row as `rows.merge`: what is there first wins;
an incoming row is new, a duplicate (of the object or of an earlier incoming row), or a
conflict (same id, other values).
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.core.ticks import conform
from workers.landing.parquet import ROW_GROUP, StreamWriter

SAME = ("event_time", "price", "quantity", "is_buyer_maker")
CONFLICT = "conflicting duplicate trade id (same id, different values)"


class Stats:
    """`rows.bucket_stats` over rows given a piece at a time (the same values)."""

    def __init__(self) -> None:
        self.n = 0
        self.ids: list[int] = []  # [min, max]
        self.span: list = []
        self.ordinary = 0
        self.open = self.close = self.high = self.low = None
        self.open_key = self.close_key = None
        self.volume = self.quote_volume = self.buy_volume = None

    def add(self, t: pa.Table) -> None:
        if not t.num_rows:
            return
        self.n += t.num_rows
        ids, times = t.column("trade_id"), t.column("event_time")
        lo, hi = pc.min(ids).as_py(), pc.max(ids).as_py()
        self.ids = [min(self.ids[0], lo), max(self.ids[1], hi)] if self.ids else [lo, hi]
        a, b = pc.min(times).as_py(), pc.max(times).as_py()
        self.span = [min(self.span[0], a), max(self.span[1], b)] if self.span else [a, b]
        o = t.filter(pc.is_null(t.column("trade_kind")))
        if not o.num_rows:
            return
        price, qty = o.column("price"), o.column("quantity")
        order = pc.sort_indices(o, sort_keys=[("event_time", "ascending"),
                                              ("trade_id", "ascending")])
        us = o.column("event_time").cast(pa.int64())
        i0, i1 = order[0].as_py(), order[-1].as_py()
        k0 = (us[i0].as_py(), o.column("trade_id")[i0].as_py())
        k1 = (us[i1].as_py(), o.column("trade_id")[i1].as_py())
        if self.open_key is None or k0 < self.open_key:
            self.open_key, self.open = k0, price[i0].as_py()
        if self.close_key is None or k1 > self.close_key:
            self.close_key, self.close = k1, price[i1].as_py()
        mm = pc.min_max(price)
        lo_p, hi_p = mm["min"].as_py(), mm["max"].as_py()
        self.low = lo_p if self.low is None else min(self.low, lo_p)
        self.high = hi_p if self.high is None else max(self.high, hi_p)
        self.volume = _plus(self.volume, pc.sum(qty).as_py())
        self.quote_volume = _plus(self.quote_volume, pc.sum(o.column("quote_quantity")).as_py())
        taker_buy = pc.filter(qty, pc.invert(o.column("is_buyer_maker")))
        if len(taker_buy):
            self.buy_volume = _plus(self.buy_volume, pc.sum(taker_buy).as_py())
        self.ordinary += o.num_rows

    def result(self) -> dict:
        out = {"trade_count": self.n, "first_trade_id": self.ids[0],
               "last_trade_id": self.ids[1], "span": tuple(self.span), "ohlcv": None}
        if self.ordinary:
            out["ohlcv"] = {
                "open": self.open, "close": self.close, "high": self.high, "low": self.low,
                "volume": self.volume, "quote_volume": self.quote_volume,
                "trade_count": self.ordinary,
                "buy_volume": self.buy_volume if self.buy_volume is not None else 0,
                "first_trade_id": self.ids[0], "last_trade_id": self.ids[1]}
        return out


def _plus(a, b):
    return b if a is None else a + b


class Streamed:
    """What a streamed merge did: the object's bytes and rows, the statistics of its content,
    and the incoming rows' fate (as rows.Merge: new_rows, duplicates, conflicts)."""

    def __init__(self, data: bytes, rows: int, stats: dict, new_rows: pa.Table, duplicates: int,
                 conflicts: list[tuple[int, str]], existing_duplicate_ids: np.ndarray):
        self.data, self.rows, self.stats = data, rows, stats
        self.new_rows, self.duplicates, self.conflicts = new_rows, duplicates, conflicts
        self.existing_duplicate_ids = existing_duplicate_ids


def merge_stream(existing: bytes, incoming: pa.Table) -> Streamed | None:
    """Merge `incoming` into the object `existing` (bytes) a row group at a time. None when the
    object is not sorted by trade id (then the caller merges in memory, as before)."""
    inc = conform(incoming)
    arrival = np.arange(inc.num_rows)
    ids_in = inc.column("trade_id").to_numpy()
    order = np.lexsort((arrival, ids_in))
    s = inc.take(pa.array(order))  # by id, then arrival
    sid = ids_in[order]
    first = np.r_[True, sid[1:] != sid[:-1]] if len(sid) else np.zeros(0, dtype=bool)
    found = np.zeros(len(sid), dtype=bool)  # the object holds the id
    same = np.ones(len(sid), dtype=bool)  # values equal to the row this one repeats
    add = np.zeros(len(sid), dtype=bool)  # lands as a new row
    out, stats = StreamWriter(), Stats()
    j, prev_last = 0, None
    for rb in pq.ParquetFile(io.BytesIO(existing)).iter_batches(batch_size=ROW_GROUP):
        e = conform(pa.Table.from_batches([rb]))
        eid = e.column("trade_id").to_numpy()
        if len(eid) and (np.any(eid[1:] <= eid[:-1]) or (prev_last is not None
                                                        and eid[0] <= prev_last)):
            return None
        if not len(eid):
            continue
        prev_last = int(eid[-1])
        k = int(np.searchsorted(sid, prev_last, side="right"))
        piece = _join(e, eid, s, sid, j, k, first, found, same, add)
        out.write(piece)
        stats.add(piece)
        j = k
    if j < len(sid):  # ids past the object's last: new where they come first
        add[j:] = first[j:]
        tail = s.slice(j).filter(pa.array(add[j:]))
        out.write(tail)
        stats.add(tail)
    # Later copies of an id the object lacks repeat its first incoming copy.
    keeper = np.maximum.accumulate(np.where(first, np.arange(len(sid)), 0))
    later = ~first & ~found
    if later.any():
        idx = np.flatnonzero(later)
        same[idx] = _equal(s, idx, s, keeper[idx])
    dup = ~add & same
    of_existing = sid[found & same]
    conflicts = [(int(order[i]), CONFLICT) for i in np.flatnonzero(~add & ~same)]
    new_rows = inc.take(pa.array(np.sort(order[add])))  # in arrival order, as rows.merge
    data = out.close()
    return Streamed(data, out.rows, stats.result(), new_rows, int(dup.sum()), conflicts,
                    of_existing.astype(np.int64))


def _join(e: pa.Table, eid: np.ndarray, s: pa.Table, sid: np.ndarray, j: int, k: int,
          first: np.ndarray, found: np.ndarray, same: np.ndarray, add: np.ndarray) -> pa.Table:
    """One row group of the object with the incoming rows up to its last id: marks which of
    s[j:k] the object holds (and whether equal), and returns the group with the new ones."""
    if k <= j:
        return e
    pos = np.searchsorted(eid, sid[j:k])
    hit = (pos < len(eid)) & (eid[np.minimum(pos, len(eid) - 1)] == sid[j:k])
    found[j:k] = hit
    if hit.any():
        idx = np.flatnonzero(hit)
        same[j + idx] = _equal(s, j + idx, e, pos[idx])
    add[j:k] = first[j:k] & ~hit
    new = s.slice(j, k - j).filter(pa.array(add[j:k]))
    if not new.num_rows:
        return e
    return pa.concat_tables([e, new]).sort_by("trade_id")


def _equal(a: pa.Table, ia: np.ndarray, b: pa.Table, ib: np.ndarray) -> np.ndarray:
    eq = np.ones(len(ia), dtype=bool)
    for col in SAME:
        x = pc.take(a.column(col), pa.array(ia))
        y = pc.take(b.column(col), pa.array(ib))
        eq &= np.asarray(pc.equal(x, y).to_numpy(zero_copy_only=False), dtype=bool)
    return eq
