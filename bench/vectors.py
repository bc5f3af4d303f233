"""Vector-search benchmark: ivfflat as the lifecycle builds it vs exact search, same run.

    .venv/bin/python bench/vectors.py [--vectors 100000] [--queries 500]

On a throwaway local environment (own clusters and S3 under /tmp):
  * the real Binance day in ../shared/data is ingested and embedded with `workers embed`
    (embed throughput; goal: the day in <= 5 s);
  * N windows from a deterministic market generator (regimes of volatility, activity, trend,
    order-flow imbalance and intraday bursts, with volatility clustering across windows) are
    turned into vectors by the same feature code and loaded; the index is built by the
    worker's lifecycle rule (vector_index.ensure: lists, ANALYZE, build record);
  * queries: the real day's windows plus held-out generated windows, k = 10, through the
    same SQL `workers similar` runs. Exact search (index scans off) is the baseline.
    Goals: recall@10 >= 0.97 and p95 latency <= 8 ms for ivfflat at the rule's probes.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, fresh_db, landing_bucket, throwaway_env, worker_env, workers_cli  # noqa: E402,I001

import psycopg  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402

from workers.signals import features  # noqa: E402

from workers.signals import vector_index

DAY = REPO.parent / "shared" / "data" / "BTCUSDT-trades-2019-04-01.zip"
T0 = datetime(2018, 1, 1, tzinfo=UTC)  # generated windows: before the real day
KNN = ("SELECT bucket FROM signals.btc_embeddings WHERE symbol = 'BTCUSDT' "
       "ORDER BY feature_vector <=> %s LIMIT 10")
# A different text, so that a cached prepared plan of one can never serve the other.
EXACT = KNN.replace("ORDER BY", "/* exact */ ORDER BY")


class Market:
    """Deterministic 5-minute windows of trades with persistent regimes."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.log_vol = np.log(2e-3)
        self.log_rate = np.log(500.0)
        self.level = 4000.0

    def window(self, start_us: int) -> np.ndarray | None:
        g = self.rng
        # Volatility and activity cluster in time (AR(1) in logs), with a daily-ish cycle.
        self.log_vol = 0.97 * self.log_vol + 0.03 * np.log(2e-3) + 0.25 * g.standard_normal()
        self.log_rate = 0.95 * self.log_rate + 0.05 * np.log(500.0) + 0.3 * g.standard_normal()
        n = int(np.clip(g.poisson(np.exp(self.log_rate)), 0, 6000))
        if n < features.MIN_TRADES:
            return None
        # Times: a uniform background plus a few bursts.
        bursts = g.integers(0, 4)
        k_burst = int(n * g.uniform(0, 0.6)) if bursts else 0
        t = g.uniform(0, 300e6, n - k_burst)
        if k_burst:
            centres = g.uniform(0, 300e6, bursts)
            t = np.concatenate([t, np.clip(g.choice(centres, k_burst)
                                           + g.normal(0, 5e6, k_burst), 0, 300e6 - 1)])
        t = np.sort(t).astype(np.int64) + start_us
        # Price: random walk per trade with this window's vol, a trend, and rare jumps.
        sigma = np.exp(self.log_vol) / np.sqrt(n)
        steps = g.standard_t(4, n) * sigma * 0.7 + g.normal(0, 1.5e-3) / n
        if g.random() < 0.05:
            steps[g.integers(0, n)] += g.normal(0, 4 * np.exp(self.log_vol))
        mid = self.level * np.exp(np.cumsum(steps))
        self.level = float(mid[-1])
        # Microstructure: takers hit the bid or lift the ask (half a spread of a few ticks away
        # from the mid), prices on a $0.01 grid — real trade paths bounce and sit on levels.
        buy_p = np.clip(g.beta(6, 6) + np.sign(steps) * 0.15, 0.02, 0.98)
        buyer_maker = g.random(n) > buy_p  # buyer is maker: the taker sold, at the bid
        half_spread = 0.01 * g.integers(1, 6) / 2
        price = np.round(mid + np.where(buyer_maker, -half_spread, half_spread), 2)
        qty = g.lognormal(np.log(0.05), 1.4, n)
        return features.embed_window(t, price, qty, buyer_maker, start_us)


def generate(n: int, seed: int) -> tuple[list[datetime], np.ndarray]:
    m, buckets, vecs = Market(seed), [], []
    i = 0
    while len(vecs) < n:
        start = T0 + timedelta(minutes=5 * i)
        v = m.window(int(start.timestamp()) * 1_000_000)
        i += 1
        if v is not None:
            buckets.append(start)
            vecs.append(v)
    return buckets, np.stack(vecs)


def load(conn: psycopg.Connection, buckets: list[datetime], vecs: np.ndarray) -> None:
    """Aggregate rows (the FK target) and embeddings, by binary COPY, as the table owner."""
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY market_data.btc_ohlcv_5m (symbol, bucket_5m, open, high, low, "
                      "close, volume, quote_volume, trade_count, buy_volume, first_trade_id, "
                      "last_trade_id) FROM STDIN") as cp:
            for i, b in enumerate(buckets):
                cp.write_row(("BTCUSDT", b, 1, 1, 1, 1, 1, 1, 1, 0, i, i))
        with cur.copy("COPY signals.btc_embeddings (symbol, bucket, feature_vector, "
                      "feature_version, source_sha256) FROM STDIN (FORMAT binary)") as cp:
            cp.set_types(["text", "timestamptz", "vector", "int2", "text"])
            for b, v in zip(buckets, vecs, strict=True):
                cp.write_row(("BTCUSDT", b, v, features.FEATURE_VERSION, "0" * 64))


def knn(conn: psycopg.Connection, q: np.ndarray, *, exact: bool, probes: int) -> tuple:
    with conn.transaction():
        if exact:
            conn.execute("SET LOCAL enable_indexscan = off")
        else:
            conn.execute(f"SET LOCAL ivfflat.probes = {int(probes)}")
        t0 = time.perf_counter()
        rows = conn.execute(EXACT if exact else KNN, [q], prepare=True).fetchall()
        return time.perf_counter() - t0, [r[0] for r in rows]


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500, help="real day's windows + generated")
    ap.add_argument("--probes", type=int, default=None, help="override the rule's probes")
    args = ap.parse_args()
    if not DAY.exists():
        raise SystemExit(f"{DAY} is missing: the shared data must sit beside the repository")

    with throwaway_env() as env:
        # 1. Embed throughput on the real day, through the worker's CLI.
        fresh_db(env, "v_day")
        landing_bucket(env, "bench-landing")
        wenv = worker_env(env, "v_day", "bench-landing")
        workers_cli(wenv, "ingest", str(DAY))
        t0 = time.perf_counter()
        out = workers_cli(wenv, "embed", "--json").stdout
        embed_cli = time.perf_counter() - t0
        import json

        day = json.loads(out.strip().splitlines()[-1])
        print(f"embed, real day: {day['embedded']} windows in {day['seconds']:.2f} s inside the "
              f"worker ({embed_cli:.2f} s with process start)  goal <= 5 s "
              f"{'ok' if embed_cli <= 5 else 'MISSED'}")
        with psycopg.connect(env.primary.dsn("v_day"),
                             password=env.secrets["postgres_password"]) as c:
            register_vector(c)
            real = np.stack([r[0].to_numpy() for r in c.execute(
                "SELECT feature_vector FROM signals.btc_embeddings ORDER BY bucket")])

        # 2. The generated corpus.
        t0 = time.perf_counter()
        buckets, vecs = generate(args.vectors, seed=42)
        _, held_out = generate(max(0, args.queries - len(real)), seed=4242)
        queries = np.concatenate([real, held_out])[:args.queries]
        print(f"generated {len(vecs):,} windows -> vectors in {time.perf_counter() - t0:.1f} s; "
              f"{len(queries)} queries ({min(len(real), len(queries))} real windows)")
        fresh_db(env, "v_corpus")
        dsn = env.primary.dsn("v_corpus")
        pw = env.secrets["postgres_password"]
        with psycopg.connect(dsn, password=pw) as c:
            register_vector(c)
            t0 = time.perf_counter()
            load(c, buckets, vecs)
            print(f"loaded {len(vecs):,} embeddings in {time.perf_counter() - t0:.1f} s")
        with psycopg.connect(env.primary.dsn("v_corpus", user="embed_worker"),
                             password=env.secrets["embed_worker"], autocommit=True) as c:
            t0 = time.perf_counter()
            st = vector_index.ensure(c)
            build = time.perf_counter() - t0
        probes = args.probes or vector_index.probes_for(st.lists)
        print(f"index: {st.action} {st.index}, lists {st.lists} (rule for {st.rows:,} rows), "
              f"built in {build:.1f} s incl. ANALYZE; probes {probes}")

        # 3. Queries, as the reader; warm both paths first (same buffers for both).
        with psycopg.connect(env.primary.dsn("v_corpus", user="reader"),
                             password=env.secrets["reader"]) as c:
            register_vector(c)
            for q in queries[:20]:
                knn(c, q, exact=True, probes=probes)
                knn(c, q, exact=False, probes=probes)
            ex_t, ix_t, recall = [], [], []
            for q in queries:  # alternate, so both see the same machine load
                te, truth = knn(c, q, exact=True, probes=probes)
                ti, got = knn(c, q, exact=False, probes=probes)
                ex_t.append(te)
                ix_t.append(ti)
                recall.append(len(set(truth) & set(got)) / len(truth))
            plans = {}
            for exact in (True, False):
                with c.transaction():
                    c.execute("SET LOCAL enable_indexscan = off" if exact else
                              f"SET LOCAL ivfflat.probes = {int(probes)}")
                    sql_text = (EXACT if exact else KNN).replace("%s", "%s::vector")
                    plans[exact] = "\n".join(r[0] for r in c.execute(
                        "EXPLAIN " + sql_text, [queries[0]]))
        if "ivfflat" not in plans[False] or "ivfflat" in plans[True]:
            raise SystemExit(f"unexpected plans:\n{plans[True]}\n---\n{plans[False]}")
        r10 = float(np.mean(recall))
        p50e, p95e, p50i, p95i = pct(ex_t, 50), pct(ex_t, 95), pct(ix_t, 50), pct(ix_t, 95)
        print()
        print(f"exact search (baseline): p50 {p50e:6.2f} ms  p95 {p95e:6.2f} ms")
        print(f"ivfflat (probes {probes:>3}):  p50 {p50i:6.2f} ms  p95 {p95i:6.2f} ms   "
              f"{p50e / p50i:4.1f}x faster at p50 (goal p95 <= 8 ms) "
              f"{'ok' if p95i <= 8 else 'MISSED'}")
        nreal = min(len(real), len(queries))
        print(f"recall@10 vs exact        = {r10:.4f} (min {min(recall):.1f}; goal >= 0.97) "
              f"{'ok' if r10 >= 0.97 else 'MISSED'}")
        print(f"  real-day queries {np.mean(recall[:nreal]):.4f} ({nreal}), generated held-out "
              f"{np.mean(recall[nreal:]) if len(recall) > nreal else float('nan'):.4f} "
              f"({len(recall) - nreal})")


if __name__ == "__main__":
    main()
