"""A bucket's rows as tables, with no storage in sight: the merge of incoming trades into a
bucket's content (what is new, what repeats, what conflicts), the split of trades by bucket, and
what a bucket's full content says for the registry and the aggregate. `Landing.merge_into`
(store.py) applies these to objects; `bounded.py` does the same merge a row group at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workers.core.ticks import BUCKET_US, conform


@dataclass
class Merge:
    table: pa.Table | None  # the bucket's full content, sorted by trade id
    new_rows: pa.Table  # rows of `incoming` not in `existing`
    duplicates: int  # incoming rows identical to one already present
    conflicts: list[tuple[int, str]]  # (incoming position, reason): same id, other values
    # trade ids of the duplicates that repeat a row of `existing` (the rest repeat an earlier
    # incoming row)
    existing_duplicate_ids: np.ndarray = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64))


def merge(existing: pa.Table | None, incoming: pa.Table) -> Merge:
    """Union deduplicated on trade id; the first seen wins (existing before incoming)."""
    incoming = conform(incoming)
    existing = None if existing is None else conform(existing)
    n_old = 0 if existing is None else existing.num_rows
    both = incoming if existing is None else pa.concat_tables([existing, incoming])
    ids = both.column("trade_id").to_numpy()
    order = np.lexsort((np.arange(len(ids)), ids))  # by id, then by arrival
    sorted_ids = ids[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    keep = order[first]
    dup_pos = order[~first]
    conflicts: list[tuple[int, str]] = []
    duplicates = 0
    if len(dup_pos):
        # The kept row for each duplicate is the nearest preceding first occurrence.
        kept_for = order[np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0))][~first]
        same = np.ones(len(dup_pos), dtype=bool)
        for col in ("event_time", "price", "quantity", "is_buyer_maker"):
            a = pc.take(both.column(col), pa.array(dup_pos))
            b = pc.take(both.column(col), pa.array(kept_for))
            same &= np.asarray(pc.equal(a, b).to_numpy(zero_copy_only=False), dtype=bool)
        # Duplicates inside an existing object were resolved when it landed: incoming only.
        incoming_dup = dup_pos >= n_old
        duplicates = int((incoming_dup & same).sum())
        of_existing = ids[dup_pos[incoming_dup & same & (kept_for < n_old)]]
        conflicts = [(int(p - n_old), "conflicting duplicate trade id (same id, different "
                      "values)") for p in dup_pos[incoming_dup & ~same]]
    else:
        of_existing = np.zeros(0, dtype=np.int64)
    keep.sort()
    table = both.take(pa.array(keep)).sort_by("trade_id")
    if existing is None:  # every row kept is new: the same rows, not a second copy of them
        return Merge(table, table, duplicates, conflicts)
    new_mask = keep >= n_old
    new_rows = both.take(pa.array(keep[new_mask]))
    return Merge(table, new_rows, duplicates, conflicts, of_existing.astype(np.int64))


def split_by_bucket(table: pa.Table, positions: np.ndarray
                    ) -> dict[int, tuple[pa.Table, np.ndarray]]:
    """{bucket µs: (its rows, their positions)} of ticks in any order."""
    us = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    b = us - us % BUCKET_US
    out: dict[int, tuple[pa.Table, np.ndarray]] = {}
    for bucket in np.unique(b):
        idx = np.flatnonzero(b == bucket)
        out[int(bucket)] = (table.take(pa.array(idx)), positions[idx])
    return out


def bucket_stats(table: pa.Table) -> dict:
    """What the registry and the aggregate say of one bucket's full content: span, ids and row
    count of every trade, and the OHLCV of the ordinary ones (`ohlcv` None when there are none:
    flagged trades — insurance fund, ADL — are not market prices)."""
    t = table.column("event_time")
    ids = table.column("trade_id")
    out = {"trade_count": table.num_rows,
           "first_trade_id": pc.min(ids).as_py(), "last_trade_id": pc.max(ids).as_py(),
           "span": (pc.min(t).as_py(), pc.max(t).as_py()), "ohlcv": None}
    ordinary = table.filter(pc.is_null(table.column("trade_kind")))
    if not ordinary.num_rows:
        return out
    price = ordinary.column("price")
    qty = ordinary.column("quantity")
    mm = pc.min_max(price)
    taker_buy = pc.filter(qty, pc.invert(ordinary.column("is_buyer_maker")))
    order = pc.sort_indices(ordinary, sort_keys=[("event_time", "ascending"),
                                                 ("trade_id", "ascending")])
    out["ohlcv"] = {
        "open": price[order[0].as_py()].as_py(),
        "close": price[order[-1].as_py()].as_py(),
        "high": mm["max"].as_py(),
        "low": mm["min"].as_py(),
        "volume": pc.sum(qty).as_py(),
        "quote_volume": pc.sum(ordinary.column("quote_quantity")).as_py(),
        "trade_count": ordinary.num_rows,
        "buy_volume": (pc.sum(taker_buy).as_py() if len(taker_buy) else 0),
        "first_trade_id": out["first_trade_id"],
        "last_trade_id": out["last_trade_id"],
    }
    return out
