"""Deterministic generated market windows -> embeddings, many windows per numpy call.

A market with persistent regimes: volatility and activity cluster in time (AR(1) in logs),
each window has a uniform background of trades plus a few bursts, a per-trade random walk with
fat tails, the window's trend and rare jumps, takers hitting the bid or lifting the ask on a
$0.01 grid. The trades go through the worker's own feature code (features.embed_windows), so
the vectors have the distribution real windows' vectors have under this market, at about
100 k windows a minute on one core: a million without a quarter of an hour in a per-window loop.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from workers.signals import features

T0 = datetime(2018, 1, 1, tzinfo=UTC)  # generated windows lie before the real day (2019)
CHUNK = 4000  # windows per batch: ~3M trades, ~250 MB of temporary arrays
GENERATOR_VERSION = 1  # bump when the process changes: cached corpora are keyed by it


def _regimes(g: np.random.Generator, n: int, state: list[float]) -> tuple[np.ndarray, ...]:
    """Per-window log volatility and log trade rate: AR(1) chains carried across batches."""
    e_vol, e_rate = g.standard_normal(n), g.standard_normal(n)
    log_vol, log_rate = np.empty(n), np.empty(n)
    lv, lr = state
    mvol, mrate = 0.03 * np.log(2e-3), 0.05 * np.log(500.0)
    for i in range(n):  # scalar recursions: ~1 µs per window
        lv = 0.97 * lv + mvol + 0.25 * e_vol[i]
        lr = 0.95 * lr + mrate + 0.3 * e_rate[i]
        log_vol[i], log_rate[i] = lv, lr
    state[:] = [lv, lr]
    return log_vol, log_rate


def _batch(g: np.random.Generator, first: int, state: list[float], level: list[float]
           ) -> tuple[np.ndarray, np.ndarray]:
    """CHUNK consecutive windows from window number `first`: (window numbers, vectors)."""
    log_vol, log_rate = _regimes(g, CHUNK, state)
    n = np.clip(g.poisson(np.exp(log_rate)), 0, 6000)
    n[n < features.MIN_TRADES] = 0  # no trades to speak of: no vector, the level stays
    nw, total = CHUNK, int(n.sum())
    w = np.repeat(np.arange(nw), n)
    start_us = (int(T0.timestamp()) + 300 * (first + np.arange(nw))) * 1_000_000

    # Times: a uniform background plus up to three bursts around random centres.
    bursts = g.integers(0, 4, nw)
    k_burst = np.where(bursts > 0, (n * g.uniform(0, 0.6, nw)).astype(np.int64), 0)
    centres = g.uniform(0, 300e6, (nw, 3))
    rank = np.arange(total) - np.repeat(np.cumsum(n) - n, n)  # trade number in its window
    in_burst = rank < k_burst[w]
    pick = (g.random(total) * np.maximum(bursts, 1)[w]).astype(np.int64)
    t = np.where(in_burst,
                 np.clip(centres[w, pick] + g.normal(0, 5e6, total), 0, 300e6 - 1),
                 g.uniform(0, 300e6, total))
    # Sorted within each window (one sort of window * 300e6 + t): the other per-trade draws are
    # independent of time, so only the times need ordering.
    offset = w * 300e6
    t_us = (np.sort(offset + t) - offset).astype(np.int64) + start_us[w]

    # Price: per-trade random walk with the window's vol, a trend, and rare jumps.
    vol = np.exp(log_vol)
    sigma = vol / np.sqrt(np.maximum(n, 1))
    drift = g.normal(0, 1.5e-3, nw) / np.maximum(n, 1)
    steps = g.standard_t(4, total) * sigma[w] * 0.7 + drift[w]
    jump = (g.random(nw) < 0.05) & (n > 0)
    at = np.cumsum(n) - n + (g.random(nw) * n).astype(np.int64)
    steps[at[jump]] += g.normal(0, 4 * vol[jump])
    cum = np.cumsum(steps)
    mid = level[0] * np.exp(cum)
    if total:
        level[0] = float(mid[-1])
    # Takers hit the bid or lift the ask, half a spread of a few cents from the mid.
    buy_p = np.clip(g.beta(6, 6, nw)[w] + np.sign(steps) * 0.15, 0.02, 0.98)
    buyer_maker = g.random(total) > buy_p
    half_spread = (0.01 * g.integers(1, 6, nw) / 2)[w]
    price = np.round(mid + np.where(buyer_maker, -half_spread, half_spread), 2)
    qty = np.exp(np.log(0.05) + 1.4 * g.standard_normal(total))  # lognormal, faster
    offsets = np.concatenate([[0], np.cumsum(n)])
    kept, vecs = features.embed_windows(offsets, t_us, price, qty, buyer_maker, start_us)
    return first + kept, vecs


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n windows: (window numbers, 5 minutes apart from T0, with gaps; float32 vectors)."""
    g = np.random.default_rng(seed)
    state, level = [np.log(2e-3), np.log(500.0)], [4000.0]
    numbers, vecs, have, first = [], [], 0, 0
    while have < n:
        k, v = _batch(g, first, state, level)
        first += CHUNK
        numbers.append(k)
        vecs.append(v)
        have += len(k)
    return np.concatenate(numbers)[:n], np.concatenate(vecs)[:n]


def buckets(numbers: np.ndarray) -> list[datetime]:
    return [T0 + timedelta(minutes=5 * int(i)) for i in numbers]


def cached(n: int, seed: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """generate(), kept in `cache` (a git-ignored directory) so reruns skip the generator. The
    first n windows of a seed do not depend on how many follow: a bigger cached run serves."""
    stem = f"windows-g{GENERATOR_VERSION}-f{features.FEATURE_VERSION}-s{seed}-n"
    have = sorted((int(f.stem.removeprefix(stem)), f) for f in cache.glob(f"{stem}*.npz")
                  if f.stem.removeprefix(stem).isdigit())
    for size, path in have:
        if size >= n:
            with np.load(path) as z:
                return z["numbers"][:n], z["vecs"][:n]
    numbers, vecs = generate(n, seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{stem}{n}.tmp.npz"
    np.savez(tmp, numbers=numbers, vecs=vecs)
    tmp.replace(cache / f"{stem}{n}.npz")
    return numbers, vecs
