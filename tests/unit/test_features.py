"""Embedding features (workers/features.py): shape, norm, determinism, scale-freedom, labels."""

from __future__ import annotations

import numpy as np

from workers.signals import features

W0 = 1_554_076_800_000_000  # a window start in µs


def window(seed: int, n: int = 400, price0: float = 4100.0):
    rng = np.random.default_rng(seed)
    t = W0 + np.sort(rng.integers(0, features.WINDOW_US, n))
    price = price0 * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
    qty = rng.exponential(0.05, n)
    bm = rng.random(n) < 0.5
    return t, price, qty, bm


def test_vector_has_256_dims_unit_norm_and_is_deterministic():
    a = features.embed_window(*window(1), W0)
    b = features.embed_window(*window(1), W0)
    assert a.shape == (256,) and a.dtype == np.float32
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-6
    assert np.array_equal(a, b)
    assert not np.array_equal(a, features.embed_window(*window(2), W0))


def test_scale_free_in_price_and_quantity():
    t, p, q, bm = window(3)
    base = features.embed_window(t, p, q, bm, W0)
    scaled = features.embed_window(t, p * 25, q / 40, bm, W0)  # 2019 vs 2025 price levels
    assert np.allclose(base, scaled, atol=1e-5)


def test_too_few_trades_gives_no_vector():
    t, p, q, bm = window(4, n=features.MIN_TRADES - 1)
    assert features.embed_window(t, p, q, bm, W0) is None


def test_similar_shapes_are_closer_than_opposite_ones():
    t, p, q, bm = window(5)
    up = features.embed_window(t, np.linspace(100, 101, len(t)), q, bm, W0)
    up2 = features.embed_window(t, np.linspace(200, 202.2, len(t)), q * 3, bm, W0)
    down = features.embed_window(t, np.linspace(101, 100, len(t)), q, ~bm, W0)
    assert float(up @ up2) > float(up @ down)


def test_labels_appear_only_with_their_horizon():
    step = features.WINDOW_US
    closes = {W0 + i * step: 100.0 * (1.01 ** i) for i in range(4)}
    lab = features.labels(closes, W0)
    assert set(lab) == {"fwd_ret_5m", "fwd_ret_15m"}
    assert abs(lab["fwd_ret_5m"] - np.log(1.01)) < 1e-9
    closes.update({W0 + i * step: 100.0 * (1.01 ** i) for i in range(4, 13)})
    lab = features.labels(closes, W0)
    assert set(lab) == {"fwd_ret_5m", "fwd_ret_15m", "fwd_ret_60m", "fwd_vol_60m"}
    assert abs(lab["fwd_vol_60m"] - np.sqrt(12) * np.log(1.01)) < 1e-9
    assert features.labels(closes, W0 + 100 * step) == {}


def test_batched_windows_equal_one_by_one():
    """embed_windows (the worker's and the benchmark's path) gives embed_window's vectors, and
    leaves out the windows embed_window leaves out: empty, below MIN_TRADES, leading empty
    steps, trades in one burst, a flat price."""
    rng = np.random.default_rng(7)
    parts, starts, expected = [], [], []
    sizes = [0, 5, features.MIN_TRADES - 1, features.MIN_TRADES, 31, 200, 1000, 2500] * 8
    for i, n in enumerate(sizes):
        start = W0 + i * features.WINDOW_US
        lo, hi = [(0, 1), (0.5, 1), (0, 0.1), (0, 1)][i % 4]
        t = start + np.sort(rng.integers(int(lo * features.WINDOW_US),
                                         int(hi * features.WINDOW_US), n))
        price = (np.full(n, 4000.0) if i % 4 == 3
                 else 4000 * np.exp(np.cumsum(rng.normal(0, 2e-4, n))))
        qty, bm = rng.exponential(0.05, n), rng.random(n) < 0.5
        parts.append((t, price, qty, bm))
        starts.append(start)
        expected.append(features.embed_window(t, price, qty, bm, start))
    offsets = np.concatenate([[0], np.cumsum([len(p[0]) for p in parts])])
    cols = [np.concatenate([p[c] for p in parts]) for c in range(4)]
    kept, vecs = features.embed_windows(offsets, *cols, np.array(starts))
    assert list(kept) == [i for i, e in enumerate(expected) if e is not None]
    assert vecs.dtype == np.float32 and vecs.shape == (len(kept), features.DIM)
    assert np.allclose(vecs, np.stack([expected[i] for i in kept]), atol=1e-6)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-6)


def test_window_offsets_cut_sorted_buckets():
    starts, offsets = features.window_offsets(np.array([5, 5, 7, 9, 9, 9]))
    assert starts.tolist() == [5, 7, 9] and offsets.tolist() == [0, 2, 3, 6]
    starts, offsets = features.window_offsets(np.array([], dtype=np.int64))
    assert starts.tolist() == [] and offsets.tolist() == [0]
    kept, vecs = features.embed_windows(offsets, *(np.array([]) for _ in range(4)), starts)
    assert len(kept) == 0 and vecs.shape == (0, features.DIM)
