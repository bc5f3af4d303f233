"""Vector search as the table grows: the lifecycle's ivfflat index vs exact search, same run.

    .venv/bin/python bench/vectors.py                     # 1k, 10k, 100k windows (~5 min)
    .venv/bin/python bench/vectors.py --vectors 1000000   # ... and 1M (~15 min; ~8 more the
                                                          # first time, to generate them)

On a throwaway local environment (own clusters and S3 under /tmp):
  * the real Binance day in ../shared/data is ingested and embedded with `workers embed`
    (embed throughput; goal: the day in <= 5 s); its windows are queries below;
  * N windows from the deterministic market generator (bench/windowgen.py: regimes of
    volatility and activity, bursts, trends, jumps, bid/ask bounce; the worker's own feature
    code) are loaded in steps of 1k, 10k, 100k, 1M; after each step the embeddings worker's
    lifecycle rule (vector_index.ensure) rebuilds the index, as `workers embed` would once the
    table doubled (the threshold is lowered to 1,000 rows so the 1k step has an index too);
  * at each step, queries alternate exact search (knn_exact.sql) and the index path
    (knn.sql) in blocks of 25, both through similar.nearest — the code `workers similar`
    runs: held-out generated windows, the real day's windows, and in-history queries (a
    stored window, the hour before it excluded, as `workers similar --at` asks). Recall@10
    is against the exact answer of the same query;
  * at the largest step: a rebuild (build new, swap) while a reader process queries (p95
    during vs outside), and the index read cold (server restarted, its files evicted from the
    page cache) vs prewarmed.
Goals (issue 19): 100k: recall@10 >= 0.98 and p95 <= exact p95 / 15; 1M: recall@10 >= 0.98
and p95 <= exact p95 / 30; p95 during a rebuild <= 2x p95 outside it.
Figures go to <out>/vectors.json ({"bench": "vectors", "figures": {...}, "curve": [...]}) and
<out>/vectors.png (kNN p95 and recall, build time and size, against vectors).
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402,I001
    REPO, fresh_db, landing_bucket, out_dir, throwaway_env, worker_env, workers_cli,
)

import psycopg  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402

import windowgen  # noqa: E402
from infra.configs import PgTuning  # noqa: E402
from workers.signals import features, similar, vector_index  # noqa: E402

DAY = REPO.parent / "shared" / "data" / "BTCUSDT-trades-2019-04-01.zip"
STEPS = (1_000, 10_000, 100_000, 1_000_000)
GOALS = {100_000: 15, 1_000_000: 30}  # p95 at least this many times below exact's
RECALL_GOAL = 0.98
LATE = datetime(2100, 1, 1, tzinfo=UTC)  # "no time filter" for queries from outside the table
DB = "v_corpus"


def pct(xs, p: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, p)) if len(xs) else float("nan")


def connect(env, user: str = "postgres") -> psycopg.Connection:
    """Autocommit, as the workers connect: an idle open transaction would hold the table's
    lock and stall the swap's DROP INDEX."""
    pw = env.secrets["postgres_password" if user == "postgres" else user]
    c = psycopg.connect(env.primary.dsn(DB, user=user), password=pw, autocommit=True)
    register_vector(c)
    return c


def load(env, numbers: np.ndarray, vecs: np.ndarray) -> None:
    """Aggregate rows (the foreign key's target) then embeddings, by COPY, as the owner. The
    aggregate is analysed in between: the foreign key's check query is planned once per
    session, and planned against an empty-looking table it scans it once per row."""
    buckets = windowgen.buckets(numbers)
    with connect(env) as c, c.transaction(), c.cursor() as cur, cur.copy(
            "COPY market_data.btc_ohlcv_5m (market, symbol, bucket_5m, open, high, low, close, "
            "volume, quote_volume, trade_count, buy_volume, first_trade_id, last_trade_id) "
            "FROM STDIN") as cp:
        for n, b in zip(numbers, buckets, strict=True):
            cp.write_row(("spot", "BTCUSDT", b, 1, 1, 1, 1, 1, 1, 1, 0, int(n), int(n)))
    with connect(env) as c:
        c.execute("ANALYZE market_data.btc_ohlcv_5m")
    with connect(env) as c, c.transaction(), c.cursor() as cur, cur.copy(
            "COPY signals.btc_embeddings (market, symbol, bucket, feature_vector, "
            "feature_version, source_sha256) FROM STDIN (FORMAT binary)") as cp:
        cp.set_types(["text", "text", "timestamptz", "vector", "int2", "text"])
        for b, v in zip(buckets, vecs, strict=True):
            cp.write_row(("spot", "BTCUSDT", b, v, features.FEATURE_VERSION, "0" * 64))
    with connect(env) as c:
        c.execute("VACUUM ANALYZE signals.btc_embeddings")


def nearest(c, q, upto, **kw):
    t0 = time.perf_counter()
    rows, probes = similar.nearest(c, q, market="spot", symbol="BTCUSDT", upto=upto, **kw)
    return time.perf_counter() - t0, [r[0] for r in rows], probes


def query_set(rows: int, numbers, vecs, held_out, real, n: int, seed: int) -> list[tuple]:
    """(kind, upto, vector): a fifth the real day's windows, two fifths held-out generated
    windows, two fifths in-history windows of the table (the hour before them excluded)."""
    rng = np.random.default_rng(seed)
    n_real = min(len(real), n // 5)
    n_hist = (n - n_real) // 2
    out = [("real day", LATE, v) for v in real[:n_real]]
    out += [("held-out", LATE, v) for v in held_out[:n - n_real - n_hist]]
    for i in rng.choice(rows, n_hist, replace=False):
        upto = windowgen.buckets(numbers[i:i + 1])[0] - timedelta(minutes=60, microseconds=1)
        out.append(("in-history", upto, vecs[i]))
    rng.shuffle(out)
    return out


BLOCK = 25  # queries per block: exact and index blocks alternate


def measure(env, queries: list[tuple]) -> dict:
    """Exact and index answers of every query, in alternating blocks of BLOCK queries: both
    paths see the same machine over the run (these 2 cores are shared), and each is timed in
    its steady state, as a stream of queries meets it — query by query alternation would time
    every index query right after an exact scan flushed the CPU caches."""
    with connect(env, user="reader") as c:
        for _, upto, q in queries[:10]:  # warm both paths
            nearest(c, q, upto, exact=True)
            nearest(c, q, upto)
        idx = vector_index.current(c)
        ex, ix, recall, kinds, probes = [], [], [], [], None
        for i in range(0, len(queries), BLOCK):
            block = queries[i:i + BLOCK]
            truths = []
            for _, upto, q in block:
                te, truth, _ = nearest(c, q, upto, exact=True)
                ex.append(te)
                truths.append(truth)
            for (kind, upto, q), truth in zip(block, truths, strict=True):
                ti, got, probes = nearest(c, q, upto, index=idx)
                ix.append(ti)
                recall.append(len(set(truth) & set(got)) / max(1, len(truth)))
                kinds.append(kind)
    by_kind = {k: round(float(np.mean([r for r, kk in zip(recall, kinds, strict=True)
                                       if kk == k])), 4) for k in sorted(set(kinds))}
    p95_by_kind = {k: round(pct([t for t, kk in zip(ix, kinds, strict=True) if kk == k], 95), 2)
                   for k in sorted(set(kinds))}
    return {"probes": probes, "exact_p50_ms": pct(ex, 50), "exact_p95_ms": pct(ex, 95),
            "index_p95_ms_by_kind": p95_by_kind,
            "index_p50_ms": pct(ix, 50), "index_p95_ms": pct(ix, 95),
            "recall_at_10": round(float(np.mean(recall)), 4), "recall_by_kind": by_kind,
            "queries": len(queries), "ratio_p95": pct(ex, 95) / pct(ix, 95),
            "ratio_p50": pct(ex, 50) / pct(ix, 50)}


def _reader(dsn: str, password: str, queries: list, stop, out) -> None:
    """A reader process: the index path in a loop; (start time, seconds, rows or -1)."""
    res = []
    with psycopg.connect(dsn, password=password, autocommit=True) as c:
        register_vector(c)
        i = 0
        while not stop.is_set():
            t0 = time.time()
            try:
                rows, _ = similar.nearest(c, queries[i % len(queries)], market="spot",
                                          symbol="BTCUSDT", upto=LATE)
                res.append((t0, time.time() - t0, len(rows)))
            except psycopg.Error:
                res.append((t0, time.time() - t0, -1))
            i += 1
    out.put(res)


def rebuild_under_load(env, queries: np.ndarray, before_s: float, after_s: float) -> dict:
    stop, out = mp.Event(), mp.Queue()
    p = mp.Process(target=_reader, args=(env.primary.dsn(DB, user="reader"),
                                         env.secrets["reader"], list(queries), stop, out))
    p.start()
    time.sleep(before_s)
    with connect(env, user="embed_worker") as c:
        b0 = time.time()
        st = vector_index.rebuild(c)
        b1 = time.time()
        built = c.execute("SELECT seconds, parallel_workers FROM signals.vector_index_builds "
                          "WHERE index_name = %s", [st.index]).fetchone()
    time.sleep(after_s)
    stop.set()
    res = out.get()
    p.join()
    outside = [d for t, d, _ in res if t < b0 or t >= b1]
    during = [d for t, d, _ in res if b0 <= t < b1]
    swap = [d for t, d, _ in res if b1 - 2 < t < b1 + 1]  # the DROP is the call's last step
    return {"rows": st.rows, "lists": st.lists, "seconds": round(b1 - b0, 1),
            "build_seconds": float(built[0]), "parallel_workers": built[1],
            "queries_outside": len(outside), "queries_during": len(during),
            "p50_outside_ms": pct(outside, 50), "p95_outside_ms": pct(outside, 95),
            "p50_during_ms": pct(during, 50), "p95_during_ms": pct(during, 95),
            "ratio_p95": pct(during, 95) / pct(outside, 95),
            "max_near_swap_ms": max(swap, default=0) * 1000,
            "errors": sum(1 for _, _, n in res if n != 10)}


def cold_vs_prewarmed(env, queries: np.ndarray) -> dict:
    """The index read after a restart with its files out of the page cache, then prewarmed."""
    with connect(env) as c:
        idx = vector_index.current(c).name
        files = [c.execute("SELECT pg_relation_filepath(%s::regclass)", [rel]).fetchone()[0]
                 for rel in (f"signals.{idx}", "signals.btc_embeddings")]
        size = c.execute("SELECT pg_relation_size(%s::regclass)", [f"signals.{idx}"]).fetchone()[0]
        shared = c.execute("SHOW shared_buffers").fetchone()[0]
    env.primary.stop()
    for f in files:  # every segment of the index and the table
        for path in glob.glob(str(env.primary.data / f)) + glob.glob(str(env.primary.data / f)
                                                                     + ".*"):
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    env.primary.start(env=env.pgbackrest_env())

    def run(qs):
        with connect(env, user="reader") as c:
            return [nearest(c, q, LATE)[0] for q in qs]

    cold = run(queries[:50])
    with connect(env) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")  # bench database only
        t0 = time.perf_counter()
        c.execute("SELECT pg_prewarm(%s::regclass)", [f"signals.{idx}"])
        prewarm_s = time.perf_counter() - t0
    warm = run(queries[50:100])
    return {"index_mb": round(size / 2**20, 1), "shared_buffers": shared,
            "cold_first_ms": cold[0] * 1000, "cold_p50_ms": pct(cold, 50),
            "cold_p95_ms": pct(cold, 95), "prewarm_s": round(prewarm_s, 2),
            "prewarmed_p50_ms": pct(warm, 50), "prewarmed_p95_ms": pct(warm, 95)}


def plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [p["vectors"] for p in curve]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    ax[0].loglog(n, [p["exact_p95_ms"] for p in curve], "o-", label="exact p95")
    ax[0].loglog(n, [p["index_p95_ms"] for p in curve], "o-", label="ivfflat p95")
    ax[0].loglog(n, [p["index_p50_ms"] for p in curve], "o--", label="ivfflat p50")
    for size, x in GOALS.items():
        goal = [p["exact_p95_ms"] / x for p in curve if p["vectors"] == size]
        if goal:
            ax[0].plot([size], goal, "k_", ms=18, label=f"goal at {size:,}: exact/{x}")
    ax[0].set(title="kNN latency (k=10)", xlabel="vectors", ylabel="ms")
    ax[0].legend(fontsize=8)
    ax[1].semilogx(n, [p["recall_at_10"] for p in curve], "o-", label="all queries")
    for kind in curve[-1]["recall_by_kind"]:
        ax[1].semilogx(n, [p["recall_by_kind"].get(kind) for p in curve], ".--", label=kind)
    ax[1].axhline(RECALL_GOAL, color="k", lw=0.8, ls=":", label=f"goal {RECALL_GOAL}")
    ax[1].set(title="recall@10 vs exact", xlabel="vectors", ylim=(0.9, 1.001))
    ax[1].legend(fontsize=8)
    ax[2].loglog(n, [p["build_s"] for p in curve], "o-", label="build s")
    ax[2].loglog(n, [p["index_mb"] for p in curve], "s-", label="index MB")
    ax[2].set(title="index build (lists = sqrt(rows))", xlabel="vectors")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000,
                    help="largest table size (steps of 1k, 10k, 100k, 1M up to it)")
    ap.add_argument("--queries", type=int, default=300,
                    help="queries per step (half of it above 100k: exact takes a second there)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where vectors.json and vectors.png go (default: $TICKSTACK_BENCH_OUT, "
                    "else .tickstack/bench/, git-ignored)")
    ap.add_argument("--cache", type=Path, default=REPO / ".tickstack" / "bench" / "cache",
                    help="generated windows are kept here between runs")
    ap.add_argument("--shared-buffers", default="2GB",
                    help="the primary's shared_buffers (default 2GB: twice the 1M index, as the "
                    "embeddings worker asks to prewarm it; the prod stack has 4GB, the local "
                    "default 256MB holds the 100k index but not the 1M one)")
    args = ap.parse_args()
    args.out = args.out or out_dir()
    if args.vectors < 1000 or args.queries < 20:
        ap.error("--vectors must be at least 1000 and --queries at least 20")
    return args


def main() -> int:
    args = parse_args()
    if not DAY.exists():
        raise SystemExit(f"{DAY} is missing: the shared data must sit beside the repository")
    steps = [s for s in STEPS if s < args.vectors] + [args.vectors]
    figures: dict = {"vectors": args.vectors}
    t_start = time.perf_counter()

    figures["shared_buffers"] = args.shared_buffers
    with throwaway_env(PgTuning(shared_buffers=args.shared_buffers)) as env:
        # 1. Embed throughput on the real day, through the worker's CLI.
        real = embed_real_day(env, figures)

        # 2. The generated corpus (cached between runs) and held-out queries.
        t0 = time.perf_counter()
        numbers, vecs = windowgen.cached(args.vectors, 42, args.cache)
        _, held_out = windowgen.cached(args.queries, 4242, args.cache)
        figures["generate_s"] = round(time.perf_counter() - t0, 1)
        print(f"{len(vecs):,} generated windows -> vectors in {figures['generate_s']} s "
              f"(cached in {args.cache}); {len(held_out)} held-out, {len(real)} real windows")
        fresh_db(env, DB)

        # 3. Grow the table step by step; the lifecycle rebuilds; measure.
        print(f"\n{'vectors':>9} {'lists':>5} {'probes':>6} {'build':>7} {'index':>8}  "
              f"{'exact p50/p95 ms':>17}  {'index p50/p95 ms':>16}  {'p95 x':>6}  recall@10")
        curve = [grow_to(env, size, loaded, args.queries, numbers, vecs, held_out, real)
                 for size, loaded in zip(steps, [0, *steps[:-1]], strict=True)]
        goals_met(curve, figures)

        # 4. Rebuild (new, then swap) while a reader process queries.
        big = args.vectors >= 500_000
        r = rebuild_under_load(env, held_out, before_s=40 if big else 20,
                               after_s=30 if big else 15)
        r["ok"] = r["ratio_p95"] <= 2 and r["errors"] == 0
        figures["rebuild"] = r
        print(f"\nrebuild at {r['rows']:,} rows ({r['lists']} lists, {r['seconds']} s, "
              f"{r['parallel_workers']} parallel workers) while a reader queries: p95 "
              f"{r['p95_during_ms']:.1f} ms during ({r['queries_during']} queries) vs "
              f"{r['p95_outside_ms']:.1f} ms outside ({r['queries_outside']}) = "
              f"{r['ratio_p95']:.2f}x (goal <= 2x), slowest near the swap "
              f"{r['max_near_swap_ms']:.0f} ms, {r['errors']} errors  "
              f"{'ok' if r['ok'] else 'MISSED'}")

        # 5. Where the index lives: read cold vs prewarmed.
        cw = cold_vs_prewarmed(env, held_out)
        figures["cold_vs_prewarmed"] = cw
        print(f"index {cw['index_mb']} MB, shared_buffers {cw['shared_buffers']}: cold (restart,"
              f" files evicted) first query {cw['cold_first_ms']:.1f} ms, p50/p95 "
              f"{cw['cold_p50_ms']:.1f}/{cw['cold_p95_ms']:.1f} ms; pg_prewarm "
              f"{cw['prewarm_s']} s, then p50/p95 {cw['prewarmed_p50_ms']:.1f}/"
              f"{cw['prewarmed_p95_ms']:.1f} ms")

    figures["seconds"] = round(time.perf_counter() - t_start)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"bench": "vectors", "figures": figures, "curve": curve}
    (args.out / "vectors.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    plot(curve, args.out / "vectors.png")
    print(f"\n{args.out / 'vectors.json'}, {args.out / 'vectors.png'} written; "
          f"{figures['seconds']} s in all")
    goals = [v["ok"] for k, v in figures.items() if k.startswith("goal_")] + [r["ok"]]
    return 0 if all(goals) else 1


def embed_real_day(env, figures: dict) -> np.ndarray:
    """The real Binance day ingested and embedded through the worker's CLI: its throughput
    into `figures`; returns its windows' vectors (queries from outside the corpus)."""
    fresh_db(env, "v_day")
    landing_bucket(env, "bench-landing")
    wenv = worker_env(env, "v_day", "bench-landing")
    workers_cli(wenv, "ingest", str(DAY))
    t0 = time.perf_counter()
    day = json.loads(workers_cli(wenv, "embed", "--json").stdout.strip().splitlines()[-1])
    embed_cli = time.perf_counter() - t0
    figures["embed_real_day"] = {"windows": day["embedded"], "worker_s": day["seconds"],
                                 "cli_s": round(embed_cli, 2)}
    print(f"embed, real day: {day['embedded']} windows in {day['seconds']:.2f} s inside "
          f"the worker ({embed_cli:.2f} s with process start)  goal <= 5 s "
          f"{'ok' if embed_cli <= 5 else 'MISSED'}")
    with psycopg.connect(env.primary.dsn("v_day"),
                         password=env.secrets["postgres_password"]) as c:
        register_vector(c)
        return np.stack([r[0] for r in c.execute(
            "SELECT feature_vector FROM signals.btc_embeddings ORDER BY bucket")])


def grow_to(env, size: int, loaded: int, queries: int, numbers: np.ndarray, vecs: np.ndarray,
            held_out: np.ndarray, real: np.ndarray) -> dict:
    """One step: the corpus loaded from `loaded` up to `size` windows, the index rebuilt by
    the lifecycle rule, then exact and index search measured. Returns the curve's point."""
    t0 = time.perf_counter()
    load(env, numbers[loaded:size], vecs[loaded:size])
    load_s = time.perf_counter() - t0
    with connect(env, user="embed_worker") as c:
        st = vector_index.ensure(c, min_rows=1000)
        size_b = c.execute("SELECT bytes FROM signals.vector_index_builds "
                           "WHERE index_name = %s", [st.index]).fetchone()[0]
    n_q = queries if size <= 100_000 else queries // 2
    m = measure(env, query_set(size, numbers, vecs, held_out, real, n_q, seed=size))
    point = {"vectors": size, "lists": st.lists, "action": st.action,
             "build_s": round(st.seconds, 2), "index_mb": round(size_b / 2**20, 1),
             "load_s": round(load_s, 1), **m}
    cal = st.calibration  # the build's check of its probes (vector_index.calibrate)
    if cal is not None:
        point["calibration"] = {
            "probes": cal.probes, "recall": round(cal.recall, 4), "queries": cal.queries,
            "seconds": round(cal.seconds, 1),
            "tried": {str(p): round(r, 4) for p, r in cal.tried.items()}}
    print(f"{size:>9,} {st.lists:>5} {m['probes']:>6} {st.seconds:>6.1f}s "
          f"{point['index_mb']:>6.1f}MB  "
          f"{m['exact_p50_ms']:>7.1f} /{m['exact_p95_ms']:>7.1f}"
          f"  {m['index_p50_ms']:>6.2f} /{m['index_p95_ms']:>7.2f}  "
          f"{m['ratio_p95']:>5.1f}x  {m['recall_at_10']:.4f} "
          + " ".join(f"{k} {v:.3f}" for k, v in m["recall_by_kind"].items()),
          flush=True)
    print(f"{'':>16}index p95 by query kind: " + ", ".join(
        f"{k} {v:.2f} ms" for k, v in m["index_p95_ms_by_kind"].items()), flush=True)
    if cal is not None:
        print(f"{'':>16}probes checked on {cal.queries} windows of the table in "
              f"{cal.seconds:.1f} s: " + ", ".join(
                  f"{p} -> recall {r:.3f}" for p, r in cal.tried.items()), flush=True)
    return point


def goals_met(curve: list[dict], figures: dict) -> None:
    """Issue 19's goals at 100k and 1M, where the run reached them, into `figures`."""
    for size, x in GOALS.items():
        p = next((p for p in curve if p["vectors"] == size), None)
        if p:
            ok = p["recall_at_10"] >= RECALL_GOAL and p["ratio_p95"] >= x
            figures[f"goal_{size}"] = {"recall_at_10": p["recall_at_10"],
                                       "ratio_p95": round(p["ratio_p95"], 1),
                                       "goal_ratio": x, "ok": ok}
            print(f"goal at {size:,}: recall@10 {p['recall_at_10']:.4f} (>= {RECALL_GOAL})"
                  f", p95 exact/{p['ratio_p95']:.1f} (>= {x}x)  "
                  f"{'ok' if ok else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
