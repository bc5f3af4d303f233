"""Ingest benchmark: ratios against baselines measured in the same run (machines are noisy).

    .venv/bin/python bench/ingest.py [--rows 2000000] [--naive-rows 3000]

On a throwaway local environment (own clusters and S3 under /tmp), with a deterministic
generated Binance spot-trades file (bench/monthgen.py's 2024 day):
  * tickstack ingest (landing + primary + aggregate + offsets) vs `psql \\copy` of the same rows
    into an identical empty btc_ticks hypertable            goal: <= 1.0x
  * per row, vs the naive loop (one INSERT per trade, committed per trade)   goal: >= 20x faster
    and, for reference, vs psycopg's pipelined executemany in one transaction
  * peak RSS of the ingest process                            goal: <= 300 MB
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))

import monthgen  # noqa: E402
from common import (  # noqa: E402
    REPO,
    fresh_db,
    landing_bucket,
    save,
    settle,
    throwaway_env,
    worker_env,
)

from infra.local.env import LocalEnv  # noqa: E402


def generate(path: Path, rows: int) -> None:
    """One day of 2024 spot trades (bench/monthgen.py), as a plain CSV."""
    spec = monthgen.Spec(days=1, trades_per_day=rows)
    pacsv.write_csv(monthgen.day_table(spec, 0, rows, spec.first_id), path,
                    pacsv.WriteOptions(include_header=False, quoting_style="none"))


def ticks_csv(src: Path, dst: Path) -> None:
    """The same rows in btc_ticks' column order, for the \\copy baseline (not timed)."""
    monthgen.copy_csv(src, dst)


def run_ingest(env: LocalEnv, db: str, bucket: str, path: Path) -> tuple[float, int]:
    landing_bucket(env, bucket)
    cenv = worker_env(env, db, bucket)
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "workers", "ingest", str(path)], cwd=REPO,
                         env=cenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # VmHWM of the exec'd process (ru_maxrss would also count the pre-exec fork of this
    # benchmark, which holds the generated data).
    peak = [0]

    def sample() -> None:
        while p.poll() is None:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    hwm = int(f.read().split("VmHWM:")[1].split()[0]) * 1024
                peak[0] = max(peak[0], hwm)
            except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = (s.decode() for s in p.communicate())
    secs = time.perf_counter() - t0
    watcher.join()
    if p.returncode != 0:
        raise SystemExit(f"ingest failed:\n{out}\n{err[-3000:]}")
    print("   ", out.strip().splitlines()[-1])
    return secs, peak[0]


def run_copy(env: LocalEnv, db: str, csv_path: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", env.primary.dsn(db), "-c",
         "SET TimeZone = 'UTC'", "-c",
         f"\\copy market_data.btc_ticks ({monthgen.COPY_COLUMNS}) FROM '{csv_path}' "
         "WITH (FORMAT csv)"],
        env={**os.environ, "PGPASSWORD": env.secrets["postgres_password"]},
        capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"psql \\copy failed: {r.stderr}")
    return secs


def naive_rows(csv_path: Path, n: int) -> list[tuple]:
    rows = []
    with open(csv_path) as f:
        for line in f:
            b, market, sym, tid, et, p, q, qq, bm = line.rstrip("\n").split(",")
            rows.append((b, market, sym, int(tid), et, p, q, qq, bm == "true"))
            if len(rows) == n:
                break
    return rows


INSERT = (f"INSERT INTO market_data.btc_ticks ({monthgen.COPY_COLUMNS}) VALUES "
          "(%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")


def run_naive(env: LocalEnv, db: str, rows: list[tuple]) -> float:
    import psycopg

    with psycopg.connect(env.primary.dsn(db), password=env.secrets["postgres_password"],
                         autocommit=True) as c:
        c.execute("SET TimeZone = 'UTC'")
        t0 = time.perf_counter()
        for r in rows:  # one statement, one commit per trade
            c.execute(INSERT, r)
        return time.perf_counter() - t0


def run_executemany(env: LocalEnv, db: str, rows: list[tuple]) -> float:
    import psycopg

    with psycopg.connect(env.primary.dsn(db), password=env.secrets["postgres_password"]) as c:
        c.execute("SET TimeZone = 'UTC'")
        t0 = time.perf_counter()
        with c.cursor() as cur:
            cur.executemany(INSERT, rows)  # pipeline mode under the hood (psycopg >= 3.1)
        c.commit()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--naive-rows", type=int, default=3_000)
    ap.add_argument("--executemany-rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; best of each")
    args = ap.parse_args()
    with throwaway_env() as env:
        state = env.state
        src = state / "BTCUSDT-trades-2024-04-01.csv"
        flat = state / "ticks.csv"
        t0 = time.perf_counter()
        generate(src, args.rows)
        ticks_csv(src, flat)
        print(f"generated {args.rows:,} rows ({src.stat().st_size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - t0:.1f} s")

        # Alternate the two, each into a fresh database, and keep each one's best round: the
        # least disturbed measurement of the same work on a noisy 2-core machine.
        copies, ingests, rss = [], [], 0
        for r in range(args.rounds):
            fresh_db(env, f"b_copy{r}")
            fresh_db(env, f"b_ingest{r}")
            settle(env)
            copies.append(run_copy(env, f"b_copy{r}", flat))
            print(f"round {r + 1}: psql \\copy into empty btc_ticks:    {copies[-1]:7.2f} s  "
                  f"{args.rows / copies[-1]:>10,.0f} rows/s")
            settle(env)
            secs, peak = run_ingest(env, f"b_ingest{r}", f"bench-landing-{r}", src)
            ingests.append(secs)
            rss = max(rss, peak)
            print(f"round {r + 1}: tickstack ingest (landing+db+agg): {secs:7.2f} s  "
                  f"{args.rows / secs:>10,.0f} rows/s  peak RSS {peak / 2**20:.0f} MB")
        copy_s, ing_s = min(copies), min(ingests)

        rows = naive_rows(flat, max(args.naive_rows, args.executemany_rows))
        settle(env)
        naive_s = run_naive(env, fresh_db(env, "b_naive"), rows[:args.naive_rows])
        em_s = run_executemany(env, fresh_db(env, "b_many"), rows[:args.executemany_rows])
        naive_rate = args.naive_rows / naive_s
        em_rate = args.executemany_rows / em_s
        ing_rate = args.rows / ing_s
        print(f"naive INSERT+COMMIT per trade:       {naive_s:7.2f} s  {naive_rate:>10,.0f} rows/s"
              f"  ({args.naive_rows:,} rows)")
        print(f"psycopg pipelined executemany:       {em_s:7.2f} s  {em_rate:>10,.0f} rows/s"
              f"  ({args.executemany_rows:,} rows)")
        print()
        ratio = ing_s / copy_s
        per_round = ", ".join(f"{i / c:.2f}x" for i, c in zip(ingests, copies, strict=True))
        print(f"ingest / psql \\copy         = {ratio:5.2f}x   (best of each; rounds: {per_round})"
              f" (goal <= 1.0x) "
              f"{'ok' if ratio <= 1.0 else 'MISSED'}")
        speed = ing_rate / naive_rate
        print(f"ingest vs naive, per row    = {speed:5.1f}x faster (goal >= 20x) "
              f"{'ok' if speed >= 20 else 'MISSED'}")
        print(f"ingest vs executemany       = {ing_rate / em_rate:5.1f}x faster (reference)")
        print(f"peak RSS of ingest          = {rss / 2**20:5.0f} MB   (goal <= 300 MB) "
              f"{'ok' if rss <= 300 * 2**20 else 'MISSED'}")
        save("ingest", {"rows": args.rows, "copy_s": [round(c, 2) for c in copies],
                        "ingest_s": [round(i, 2) for i in ingests],
                        "ratio_best": round(ratio, 3),
                        "ratio_rounds": [round(i / c, 3) for i, c in zip(ingests, copies,
                                                                         strict=True)],
                        "ingest_rows_per_s": round(ing_rate),
                        "naive_rows_per_s": round(naive_rate),
                        "executemany_rows_per_s": round(em_rate),
                        "vs_naive": round(speed, 1), "peak_rss_mb": round(rss / 2**20)})


if __name__ == "__main__":
    main()
