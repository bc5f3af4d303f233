"""The streamed merge of a large bucket object (workers/landing/bounded.py) gives what the
in-memory merge gives: the same bytes, statistics and fate of every incoming row."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from workers.core.ticks import TICK_SCHEMA
from workers.landing.bounded import merge_stream
from workers.landing.parquet import ROW_GROUP, to_parquet
from workers.landing.rows import bucket_stats, merge

T0 = 1_554_120_000_000_000


def ticks(ids, rng, *, times=None, kinds=None) -> pa.Table:
    n = len(ids)
    times = times if times is not None else T0 + rng.integers(0, 300_000_000, n)
    price = [Decimal(int(x)) / 100 for x in rng.integers(400_000, 420_000, n)]
    qty = [Decimal(int(x)) / 10_000 for x in rng.integers(1, 50_000, n)]
    return pa.table({
        "trade_id": pa.array(ids, pa.int64()),
        "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
        "price": pa.array(price, pa.decimal128(24, 8)),
        "quantity": pa.array(qty, pa.decimal128(24, 8)),
        "quote_quantity": pa.array([p * q for p, q in zip(price, qty, strict=True)],
                                   pa.decimal128(32, 8)),
        "is_buyer_maker": pa.array(rng.integers(0, 2, n).astype(bool)),
        "trade_kind": pa.array(kinds if kinds is not None else [None] * n, pa.string()),
    }).cast(TICK_SCHEMA)


@pytest.mark.parametrize("seed", range(4))
def test_streamed_merge_equals_the_in_memory_merge(seed):
    rng = np.random.default_rng(seed)
    n_old = ROW_GROUP * 2 + int(rng.integers(1, 5000))
    old_ids = np.sort(rng.choice(np.arange(10 * n_old), n_old, replace=False))
    kinds = [("ADL" if rng.random() < 0.01 else None) for _ in range(n_old)]
    existing = merge(None, ticks(old_ids, rng, kinds=kinds)).table
    data = to_parquet(existing)
    # incoming: copies of stored rows, conflicting copies, new ids (some twice), in any order
    same = existing.take(pa.array(rng.choice(n_old, 3000, replace=False)))
    other = ticks(rng.choice(old_ids, 200, replace=False), rng)
    fresh_ids = np.setdiff1d(rng.choice(np.arange(12 * n_old), 40_000), old_ids)
    fresh = ticks(fresh_ids, rng)
    again = fresh.take(pa.array(rng.choice(fresh.num_rows, 500)))
    incoming = pa.concat_tables([same, other, fresh, again, ticks(fresh_ids[:50], rng)])
    incoming = incoming.take(pa.array(rng.permutation(incoming.num_rows)))

    want = merge(existing, incoming)
    got = merge_stream(data, incoming)
    assert got is not None
    assert got.data == to_parquet(want.table)
    assert got.rows == want.table.num_rows
    assert got.stats == bucket_stats(want.table)
    assert got.duplicates == want.duplicates
    assert sorted(got.conflicts) == sorted(want.conflicts)
    assert sorted(got.existing_duplicate_ids.tolist()) == sorted(
        want.existing_duplicate_ids.tolist())
    assert got.new_rows.sort_by("trade_id").equals(want.new_rows.sort_by("trade_id"))


def test_an_object_not_sorted_by_trade_id_is_left_to_the_in_memory_merge():
    rng = np.random.default_rng(7)
    t = ticks(np.arange(ROW_GROUP * 2)[::-1].copy(), rng)
    assert merge_stream(to_parquet(t), ticks([5], rng)) is None
