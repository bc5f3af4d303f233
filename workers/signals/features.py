"""The 256-dimensional market-window embedding (feature_version 2). Pure numpy, deterministic.

A window is one closed 5-minute bucket of one symbol, cut into 60 steps of 5 seconds. Every
block is scale-free — returns are logarithmic, volumes and counts are shares of the window's
own totals — so windows from 2019 at $4,000 and 2025 at $100,000 are comparable.

    dims      block
    0-59      log-return path: the volume-weighted mean log price of step i (carried over
              empty steps) minus the first step's, centred — the shape of the price path
    60-119    cumulative volume share at the end of each step, minus the uniform ramp (i+1)/60:
              when in the window the volume arrived
    120-179   cumulative signed volume share: (taker buy - taker sell) so far / window volume,
              the order-flow path
    180-239   cumulative trade-count share, minus the uniform ramp
    240-255   window statistics (see STATS)

Each block is scaled to unit L2 norm times its weight, then the whole vector to unit norm, so
cosine distance weighs the blocks as WEIGHTS says. Windows with fewer than MIN_TRADES trades get
no vector (counted as skipped): a handful of trades has no shape to compare.

Why cumulative paths (version 2) rather than per-step increments (version 1): increments of a
random walk are close to white noise, so 60 of them spread windows evenly over a 60-dimensional
sphere — every window is about equally far from every other, "similar" means little, and an
ivfflat index needs most of its lists probed to find the true neighbours (recall@10 0.81 at
sqrt(lists) probes on generated markets). The cumulative path keeps the same information but
puts most of its variance in a few slow components (its shape), where neighbours are meaningful
and ivfflat reaches 0.99 at the same probes (bench/vectors.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURE_VERSION = 2
DIM = 256
STEPS = 60
STEP_US = 5_000_000
WINDOW_US = STEPS * STEP_US
MIN_TRADES = 30
WEIGHTS = {"returns": 1.0, "volume": 0.6, "signed": 0.8, "count": 0.4, "stats": 1.0}
STATS = (
    "window log return", "realised volatility (sqrt sum r^2)", "log(high/low)",
    "close position in range", "taker-buy volume share", "volume concentration (Herfindahl)",
    "share of steps with trades", "max |step return| / vol", "return skew", "return kurtosis",
    "first-half volume share", "last-minute volume share", "signed volume imbalance",
    "trade size dispersion (cv)", "largest trade share", "up-step share",
)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def embed_window(t_us: np.ndarray, price: np.ndarray, qty: np.ndarray, buyer_maker: np.ndarray,
                 window_start_us: int) -> np.ndarray | None:
    """One window's vector from its trades (sorted by time); None below MIN_TRADES."""
    n = len(t_us)
    if n < MIN_TRADES:
        return None
    step = np.clip((t_us - window_start_us) // STEP_US, 0, STEPS - 1).astype(np.int64)
    vol = np.bincount(step, weights=qty, minlength=STEPS)
    cnt = np.bincount(step, minlength=STEPS).astype(np.float64)
    sign = np.where(buyer_maker, -1.0, 1.0)  # buyer is maker -> the taker sold
    signed = np.bincount(step, weights=qty * sign, minlength=STEPS)
    total_vol = vol.sum()

    # Last price per step, carried forward over empty steps.
    last_idx = np.full(STEPS, -1)
    np.maximum.at(last_idx, step, np.arange(n))
    filled = np.maximum.accumulate(last_idx)
    logp = np.log(price)
    step_logp = np.where(filled >= 0, logp[np.maximum(filled, 0)], logp[0])
    r = np.diff(np.concatenate([[logp[0]], step_logp]))
    rv = float(np.sqrt(np.sum(r * r)))
    sd = float(np.std(r))

    hi, lo = float(price.max()), float(price.min())
    half = STEPS // 2
    trade_share = qty / total_vol
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = float(np.mean(((r - r.mean()) / sd) ** 3)) if sd > 0 else 0.0
        kurt = float(np.mean(((r - r.mean()) / sd) ** 4)) - 3.0 if sd > 0 else 0.0
    stats = np.array([
        logp[-1] - logp[0], rv, np.log(hi / lo),
        (price[-1] - lo) / (hi - lo) - 0.5 if hi > lo else 0.0,
        float(qty[~buyer_maker].sum() / total_vol) - 0.5,
        float(np.sum((vol / total_vol) ** 2)) - 1.0 / STEPS,
        float(np.mean(cnt > 0)) - 0.5,
        float(np.max(np.abs(r)) / rv) if rv > 0 else 0.0,
        np.tanh(skew / 3), np.tanh(kurt / 10),
        float(vol[:half].sum() / total_vol) - 0.5,
        float(vol[-12:].sum() / total_vol) - 0.2,
        float(signed.sum() / total_vol),
        float(np.std(qty) / np.mean(qty)) / 10,
        float(trade_share.max()),
        float(np.mean(r > 0)) - 0.5,
    ])
    # Returns and vol are tiny numbers (1e-4..1e-2): bring them to unit scale.
    stats[:3] *= 100
    # The shape uses each step's volume-weighted mean log price: the last trade's price
    # bounces between bid and ask, which would bury the shape in microstructure noise.
    with np.errstate(invalid="ignore", divide="ignore"):
        vw = np.bincount(step, weights=qty * logp, minlength=STEPS) / vol
    vw_idx = np.maximum.accumulate(np.where(vol > 0, np.arange(STEPS), -1))
    first = vw[vw_idx[vw_idx >= 0][0]]
    vw_path = np.where(vw_idx >= 0, vw[np.maximum(vw_idx, 0)], first)
    path = vw_path - first
    ramp = np.arange(1, STEPS + 1) / STEPS
    blocks = [
        WEIGHTS["returns"] * _unit(path - path.mean()),
        WEIGHTS["volume"] * _unit(np.cumsum(vol) / total_vol - ramp),
        WEIGHTS["signed"] * _unit(np.cumsum(signed) / total_vol),
        WEIGHTS["count"] * _unit(np.cumsum(cnt) / n - ramp),
        WEIGHTS["stats"] * _unit(stats),
    ]
    v = np.concatenate(blocks)
    assert v.shape == (DIM,)
    return _unit(v).astype(np.float32)


def embed_windows(offsets: np.ndarray, t_us: np.ndarray, price: np.ndarray, qty: np.ndarray,
                  buyer_maker: np.ndarray, window_start_us: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Many windows at once: embed_window's vectors, computed on (windows, 60) arrays.

    Trades are sorted by (window, time); window i holds trades offsets[i]:offsets[i + 1] and
    starts at window_start_us[i]. Returns (indices of the windows embedded, vectors): windows
    below MIN_TRADES are left out, as embed_window leaves them out. The same numbers as
    embed_window up to float rounding (tests/unit/test_features.py checks it), without
    per-window numpy calls: the worker's batches and the million-vector benchmark use it.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    kept = np.flatnonzero(counts >= MIN_TRADES)
    if len(kept) == 0:
        return kept, np.empty((0, DIM), np.float32)
    if len(kept) < len(counts):  # only the trades of the windows embedded
        sel = np.repeat(counts >= MIN_TRADES, counts)
        t_us, price, qty, buyer_maker = t_us[sel], price[sel], qty[sel], buyer_maker[sel]
        counts = counts[kept]
    g = _Grid.of(counts, t_us, qty, buyer_maker, np.asarray(window_start_us)[kept])
    logp = np.log(price)
    r = _step_log_returns(g, logp)
    stats = _stats_many(g, price, qty, buyer_maker, logp, r)
    path = _vw_path_many(g, qty, logp)
    ramp = np.arange(1, STEPS + 1) / STEPS
    v = np.concatenate([
        WEIGHTS["returns"] * _units(path - path.mean(axis=1, keepdims=True)),
        WEIGHTS["volume"] * _units(np.cumsum(g.vol, axis=1) / g.total_vol[:, None] - ramp),
        WEIGHTS["signed"] * _units(np.cumsum(g.signed, axis=1) / g.total_vol[:, None]),
        WEIGHTS["count"] * _units(np.cumsum(g.cnt, axis=1) / g.n[:, None] - ramp),
        WEIGHTS["stats"] * _units(stats),
    ], axis=1)
    return kept, _units(v).astype(np.float32)


@dataclass(frozen=True)
class _Grid:
    """The trades of `nw` windows on their (window, 5-second step) grid, with each step's
    sums as (nw, STEPS) arrays."""

    nw: int
    w: np.ndarray  # each trade's window
    key: np.ndarray  # each trade's cell, window * STEPS + step (non-decreasing)
    starts: np.ndarray  # each window's first trade
    ends: np.ndarray  # one past each window's last trade
    n: np.ndarray  # trades of each window (float)
    vol: np.ndarray
    cnt: np.ndarray
    signed: np.ndarray  # taker buy - taker sell volume
    total_vol: np.ndarray

    @classmethod
    def of(cls, counts: np.ndarray, t_us: np.ndarray, qty: np.ndarray,
           buyer_maker: np.ndarray, start_us: np.ndarray) -> _Grid:
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        nw = len(counts)
        w = np.repeat(np.arange(nw), counts)
        step = np.clip((t_us - start_us[w]) // STEP_US, 0, STEPS - 1).astype(np.int64)
        key = w * STEPS + step  # non-decreasing: trades are sorted by window and time
        size = nw * STEPS
        vol = np.bincount(key, weights=qty, minlength=size).reshape(nw, STEPS)
        cnt = np.bincount(key, minlength=size).reshape(nw, STEPS).astype(np.float64)
        sign = np.where(buyer_maker, -1.0, 1.0)
        signed = np.bincount(key, weights=qty * sign, minlength=size).reshape(nw, STEPS)
        return cls(nw, w, key, starts, starts + counts, counts.astype(np.float64), vol, cnt,
                   signed, vol.sum(axis=1))


def _step_log_returns(g: _Grid, logp: np.ndarray) -> np.ndarray:
    """(nw, STEPS) log returns between the last trades of consecutive steps (the last trade
    carried forward over empty steps; the first step's from the window's first trade)."""
    key = g.key
    last = np.flatnonzero(np.diff(key, append=key[-1] + 1))  # where the key changes
    last_idx = np.full(g.nw * STEPS, -1)
    last_idx[key[last]] = last
    filled = np.maximum.accumulate(last_idx.reshape(g.nw, STEPS), axis=1)
    logp0 = logp[g.starts]
    step_logp = np.where(filled >= 0, logp[np.maximum(filled, 0)], logp0[:, None])
    return np.diff(np.concatenate([logp0[:, None], step_logp], axis=1), axis=1)


def _stats_many(g: _Grid, price: np.ndarray, qty: np.ndarray, buyer_maker: np.ndarray,
                logp: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The (nw, 16) window statistics (STATS), as embed_window computes them for one."""
    w, starts, ends, n, vol, total_vol = g.w, g.starts, g.ends, g.n, g.vol, g.total_vol
    rv = np.sqrt(np.sum(r * r, axis=1))
    sd = np.std(r, axis=1)
    hi = np.maximum.reduceat(price, starts)
    lo = np.minimum.reduceat(price, starts)
    close = price[ends - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (r - r.mean(axis=1, keepdims=True)) / sd[:, None]
        skew = np.where(sd > 0, np.mean(z ** 3, axis=1), 0.0)
        kurt = np.where(sd > 0, np.mean(z ** 4, axis=1) - 3.0, 0.0)
        mean_q = np.bincount(w, weights=qty, minlength=g.nw) / n
        sd_q = np.sqrt(np.bincount(w, weights=(qty - mean_q[w]) ** 2, minlength=g.nw) / n)
        stats = np.stack([
            logp[ends - 1] - logp[starts], rv, np.log(hi / lo),
            np.where(hi > lo, (close - lo) / (hi - lo) - 0.5, 0.0),
            np.bincount(w, weights=qty * ~buyer_maker, minlength=g.nw) / total_vol - 0.5,
            np.sum((vol / total_vol[:, None]) ** 2, axis=1) - 1.0 / STEPS,
            np.mean(g.cnt > 0, axis=1) - 0.5,
            np.where(rv > 0, np.max(np.abs(r), axis=1) / rv, 0.0),
            np.tanh(skew / 3), np.tanh(kurt / 10),
            vol[:, :STEPS // 2].sum(axis=1) / total_vol - 0.5,
            vol[:, -12:].sum(axis=1) / total_vol - 0.2,
            g.signed.sum(axis=1) / total_vol,
            sd_q / mean_q / 10,
            np.maximum.reduceat(qty, starts) / total_vol,
            np.mean(r > 0, axis=1) - 0.5,
        ], axis=1)
    stats[:, :3] *= 100
    return stats


def _vw_path_many(g: _Grid, qty: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """(nw, STEPS) volume-weighted mean log price of each step (carried over empty steps)
    minus the first step's."""
    rows = np.arange(g.nw)
    with np.errstate(invalid="ignore", divide="ignore"):
        vw = np.bincount(g.key, weights=qty * logp,
                         minlength=g.nw * STEPS).reshape(g.nw, STEPS) / g.vol
    vw_idx = np.maximum.accumulate(np.where(g.vol > 0, np.arange(STEPS), -1), axis=1)
    first = vw[rows, np.argmax(g.vol > 0, axis=1)]
    vw_path = np.where(vw_idx >= 0, vw[rows[:, None], np.maximum(vw_idx, 0)], first[:, None])
    return vw_path - first[:, None]


def _units(m: np.ndarray) -> np.ndarray:
    """Each row to unit L2 norm (zero rows stay zero), as _unit does for one vector."""
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)


def window_offsets(bucket_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(window starts, offsets) of rows already sorted by bucket, as embed_windows takes them."""
    if len(bucket_us) == 0:
        return np.empty(0, np.int64), np.zeros(1, np.int64)
    cuts = np.flatnonzero(np.diff(bucket_us)) + 1
    offsets = np.concatenate([[0], cuts, [len(bucket_us)]])
    return bucket_us[offsets[:-1]], offsets


def labels(closes: dict[int, float], bucket_us: int) -> dict:
    """What followed the window: keys appear only once their horizon has data, never as zero.

    Forward log returns of the close at +5, +15 and +60 minutes, and realised volatility of the
    twelve 5-minute returns of the next hour (needs all twelve windows).
    """
    out: dict = {}
    c0 = closes.get(bucket_us)
    if c0 is None:
        return out
    for minutes, key in ((5, "fwd_ret_5m"), (15, "fwd_ret_15m"), (60, "fwd_ret_60m")):
        c = closes.get(bucket_us + minutes * 60_000_000)
        if c is not None:
            out[key] = round(float(np.log(c / c0)), 10)
    path = [closes.get(bucket_us + i * WINDOW_US) for i in range(13)]
    if all(p is not None for p in path):
        lr = np.diff(np.log(np.array(path, dtype=np.float64)))
        out["fwd_vol_60m"] = round(float(np.sqrt(np.sum(lr * lr))), 10)
    return out
