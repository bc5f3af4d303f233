"""Ingest benchmark: ratios against baselines measured in the same run (machines are noisy).

    .venv/bin/python bench/ingest.py [--rows 2000000] [--naive-rows 3000]

On a throwaway local environment (own clusters and S3 under /tmp), with a deterministic
generated Binance spot-trades file:
  * tickstack ingest (landing + primary + aggregate + offsets) vs `psql \\copy` of the same rows
    into an identical empty btc_ticks hypertable            goal: <= 1.25x
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

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, fresh_db, landing_bucket, throwaway_env, worker_env  # noqa: E402

from infra.local.env import LocalEnv  # noqa: E402

T0_MS = 1_711_929_600_000  # 2024-04-01 00:00 UTC


def generate(path: Path, rows: int, seed: int = 7) -> None:
    """A day of spot trades with a random-walk price; deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    ids = np.arange(3_000_000_000, 3_000_000_000 + rows, dtype=np.int64)
    t = T0_MS + np.sort(rng.integers(0, 86_400_000, rows))
    cents = np.maximum(1, 6_500_000 + np.cumsum(rng.integers(-3, 4, rows))).astype(np.int64)
    price = np.char.add(np.char.add((cents // 100).astype(str), "."),
                        np.char.zfill((cents % 100).astype(str), 2))
    qty_units = rng.integers(1, 500_000, rows)  # in 1e-8 BTC... scaled below
    qty = np.char.add("0.", np.char.zfill(qty_units.astype(str), 8))
    quote = np.round(cents / 100 * qty_units / 1e8, 8)
    bm = np.where(rng.random(rows) < 0.5, "True", "False")
    table = pa.table({"id": ids, "price": price, "qty": qty, "quote": quote, "time": t,
                      "bm": bm, "best": np.full(rows, "True")})
    pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def ticks_csv(src: Path, dst: Path) -> None:
    """The same rows in btc_ticks' column order, for the \\copy baseline (not timed)."""
    t = pacsv.read_csv(src, read_options=pacsv.ReadOptions(
        column_names=["id", "price", "qty", "quote", "time", "bm", "best"]),
        convert_options=pacsv.ConvertOptions(column_types={
            "price": pa.string(), "qty": pa.string(), "quote": pa.string(), "bm": pa.string()}))
    ms = t.column("time").to_numpy()
    out = pa.table({
        "bucket_5m": pa.array((ms - ms % 300_000) * 1000).cast(pa.timestamp("us")),
        "symbol": pa.array(["BTCUSDT"] * t.num_rows),
        "trade_id": t.column("id"),
        "event_time": pa.array(ms * 1000).cast(pa.timestamp("us")),
        "price": t.column("price"), "quantity": t.column("qty"),
        "quote_quantity": t.column("quote"),
        "is_buyer_maker": pa.array(np.char.lower(t.column("bm").to_numpy(zero_copy_only=False)
                                                 .astype(str)) == "true"),
    })
    pacsv.write_csv(out, dst, pacsv.WriteOptions(include_header=False, quoting_style="none"))


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
    cols = ("bucket_5m, symbol, trade_id, event_time, price, quantity, quote_quantity, "
            "is_buyer_maker")
    t0 = time.perf_counter()
    r = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", env.primary.dsn(db), "-c",
         "SET TimeZone = 'UTC'", "-c",
         f"\\copy market_data.btc_ticks ({cols}) FROM '{csv_path}' WITH (FORMAT csv)"],
        env={**os.environ, "PGPASSWORD": env.secrets["postgres_password"]},
        capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"psql \\copy failed: {r.stderr}")
    return secs


def settle(env: LocalEnv) -> None:
    """Checkpoint and let the WAL archiver catch up, so no run pays for the previous one's
    WAL (archive-push compresses and uploads every segment on these 2 cores)."""
    env.primary.psql("CHECKPOINT")
    seg = env.primary.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    env.primary.psql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = env.primary.psql("SELECT coalesce(last_archived_wal >= %s, false) "
                                "FROM pg_stat_archiver".replace("%s", f"'{seg}'"))
        if done == "t":
            return
        time.sleep(0.5)
    raise SystemExit("WAL archiving did not catch up within 5 minutes")


def naive_rows(csv_path: Path, n: int) -> list[tuple]:
    rows = []
    with open(csv_path) as f:
        for line in f:
            b, sym, tid, et, p, q, qq, bm = line.rstrip("\n").split(",")
            rows.append((b, sym, int(tid), et, p, q, qq, bm == "true"))
            if len(rows) == n:
                break
    return rows


INSERT = ("INSERT INTO market_data.btc_ticks (bucket_5m, symbol, trade_id, event_time, price, "
          "quantity, quote_quantity, is_buyer_maker) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
          "ON CONFLICT DO NOTHING")


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
              f" (goal <= 1.25x) "
              f"{'ok' if ratio <= 1.25 else 'MISSED'}")
        speed = ing_rate / naive_rate
        print(f"ingest vs naive, per row    = {speed:5.1f}x faster (goal >= 20x) "
              f"{'ok' if speed >= 20 else 'MISSED'}")
        print(f"ingest vs executemany       = {ing_rate / em_rate:5.1f}x faster (reference)")
        print(f"peak RSS of ingest          = {rss / 2**20:5.0f} MB   (goal <= 300 MB) "
              f"{'ok' if rss <= 300 * 2**20 else 'MISSED'}")


if __name__ == "__main__":
    main()
