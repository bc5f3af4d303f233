"""Dual-write benchmark: ingest and stream throughput with no replica vs a hanging replica.

    .venv/bin/python bench/replica.py [--rounds 2]

On a throwaway local environment. A hanging replica accepts TCP connections and never answers
(the worst case for a best-effort secondary). Rounds alternate the variants; each run gets a
fresh database and landing bucket. Printed as ratios measured in the same run:
  * `workers ingest` of the real 2019-04-01 day (183,355 trades)  hanging / none   goal: <= 2x
  * `workers stream` of the recorded 2024-08-08 messages (9,757)  hanging / none   goal: <= 2x
    (time until the last trade's offset is committed; process start included in both)
and, for reference, with a healthy replica (real dual-write on every batch).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, fresh_db, landing_bucket, throwaway_env, worker_env  # noqa: E402

from tests.integration.tcpproxy import Proxy  # noqa: E402
from tests.integration.wsreplay import ReplayServer, trade_messages  # noqa: E402
from workers.db import migrate  # noqa: E402

DAY = REPO.parent / "shared" / "data" / "BTCUSDT-trades-2019-04-01.csv"


def replica_db(env) -> str:
    name = "r_" + uuid.uuid4().hex[:10]
    env.replica.psql(f'CREATE DATABASE "{name}"')
    migrate.run(env.replica.dsn(name), password=env.secrets["postgres_password"],
                logins=env.worker_logins())
    return name


def setup(env, variant: str, hung_port: int) -> dict[str, str]:
    db = fresh_db(env, "b_" + uuid.uuid4().hex[:10])
    bucket = "bench-" + uuid.uuid4().hex[:10]
    landing_bucket(env, bucket)
    e = worker_env(env, db, bucket)
    if variant == "hanging":
        e["TICKSTACK_REPLICA_DSN"] = f"postgresql://postgres:x@127.0.0.1:{hung_port}/x"
    elif variant == "healthy":
        e["TICKSTACK_REPLICA_DSN"] = env.replica.dsn(replica_db(env))
    return e


def run_ingest(e: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "workers", "ingest", str(DAY), "--json"],
                       cwd=REPO, env=e, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"ingest failed:\n{r.stderr[-2000:]}")
    assert json.loads(r.stdout.strip().splitlines()[-1])["inserted"] == 183_355
    return dt


def run_stream(env, e: dict[str, str], msgs: list[str], last_id: int) -> float:
    import psycopg

    e = {**e, "TICKSTACK_HEALTH_PORT": "0", "TICKSTACK_HEALTH_HOST": "127.0.0.1"}
    with ReplayServer(msgs) as srv:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "workers", "stream", "--url", srv.url,
                              "--market", "spot"],
                             cwd=REPO, env=e, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        dsn = e["TICKSTACK_PRIMARY_DSN"]
        with psycopg.connect(dsn, password=env.secrets["postgres_password"],
                             autocommit=True) as c:
            while True:
                r = c.execute("SELECT last_trade_id FROM ingestion.stream_offsets "
                              "WHERE source = 'stream:binance'").fetchone()
                if r and r[0] == last_id:
                    break
                if p.poll() is not None or time.perf_counter() - t0 > 300:
                    raise SystemExit("stream worker stopped or never caught up")
                time.sleep(0.02)
        dt = time.perf_counter() - t0
        p.send_signal(signal.SIGTERM)
        p.wait(60)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    msgs = trade_messages()
    last_id = json.loads(msgs[-1])["data"]["t"]
    variants = ("none", "hanging", "healthy")
    times: dict[str, dict[str, list[float]]] = {"ingest": {}, "stream": {}}
    with throwaway_env() as env, Proxy(mode="hang") as hung:
        for rnd in range(args.rounds):
            order = variants if rnd % 2 == 0 else tuple(reversed(variants))
            for v in order:
                t = run_ingest(setup(env, v, hung.port))
                times["ingest"].setdefault(v, []).append(t)
                print(f"round {rnd + 1}: ingest, {v:8s} replica: {t:6.2f} s", flush=True)
                t = run_stream(env, setup(env, v, hung.port), msgs, last_id)
                times["stream"].setdefault(v, []).append(t)
                print(f"round {rnd + 1}: stream, {v:8s} replica: {t:6.2f} s", flush=True)
        print(f"\nhanging replica: {hung.accepted} connections accepted in all (the breaker "
              "stops retrying)")
    from common import save

    save("replica", {"seconds": times, "median_ratio_to_none": {
        what: {v: round(statistics.median(rows[v]) / statistics.median(rows["none"]), 3)
               for v in variants} for what, rows in times.items()}})
    print("\nmedian seconds and ratio to no replica (goal for hanging: <= 2x)")
    for what, rows in (("ingest 183,355 trades", times["ingest"]),
                       ("stream 9,757 messages", times["stream"])):
        base = statistics.median(rows["none"])
        for v in variants:
            m = statistics.median(rows[v])
            print(f"  {what}: {v:8s} {m:6.2f} s  {m / base:5.2f}x"
                  + ("  OK" if v == "hanging" and m / base <= 2 else
                     "  OVER GOAL" if v == "hanging" else ""))


if __name__ == "__main__":
    main()
