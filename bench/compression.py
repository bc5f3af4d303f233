"""Licensed TimescaleDB: what compression saves and what it costs the paths that touch it.

    .venv/bin/python bench/compression.py [--rounds 2]

On a throwaway local environment the real Binance day is ingested into two databases of the same
primary: C, whose chunk retention then compresses (the shipped job: compress_after 30 days), and
U, never compressed. Every path production runs over old data is then timed on both, alternating
which goes first, and printed as C / U (the uncompressed database is the baseline, same run):

  * re-ingest of the whole day (every trade a duplicate inside the chunk);
  * late trades (new ids for old buckets) merged into the chunk;
  * landing replay of every bucket (known buckets: the checked, deduplicating path);
  * `replicate`: a full catch-up of an empty replica database (reads the primary's checksums);
  * `embed` from scratch (reads every window's ticks) and `similar` (one query);
And the compression itself: its time, and the chunk's size before and after (the ratio).
Backups of compressed data: bench/backup.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402,I001
    REPO, fresh_db, landing_bucket, save, throwaway_env, worker_env, workers_cli,
)

import psycopg  # noqa: E402

from workers.db import migrate  # noqa: E402

DAY = REPO.parent / "shared" / "data" / "BTCUSDT-trades-2019-04-01.zip"


class Db:
    def __init__(self, env, name: str):
        self.env, self.name = env, fresh_db(env, name)
        self.bucket = f"bench-{name.replace('_', '-')}"
        landing_bucket(env, self.bucket)
        self.vars = {**worker_env(env, self.name, self.bucket),
                     "TICKSTACK_RETENTION_DSN": env.primary.dsn(self.name,
                                                                user="retention_worker")}

    def cli(self, *args: str, **extra: str) -> tuple[float, str]:
        t0 = time.perf_counter()
        r = workers_cli({**self.vars, **extra}, *args)
        return time.perf_counter() - t0, r.stdout

    def sql(self, q: str, *params):
        with psycopg.connect(self.env.primary.dsn(self.name),
                             password=self.env.secrets["postgres_password"],
                             autocommit=True) as c:
            cur = c.execute(q, params)
            return cur.fetchall() if cur.description else []


def replica_db(env) -> str:
    name = "bench_replica_" + uuid.uuid4().hex[:8]
    env.replica.psql(f'CREATE DATABASE "{name}"')
    migrate.run(env.replica.dsn(name), password=env.secrets["postgres_password"],
                logins=env.worker_logins())
    return env.replica.dsn(name)


def late_file(tmp: Path, n: int = 500, start: int = 300_000_000) -> Path:
    """n new trades (ids the day lacks) spread over the day's hours 06:00-18:00."""
    t0 = 1_554_076_800_000 + 6 * 3_600_000
    p = tmp / f"BTCUSDT-trades-2019-04-01-late-{start}.csv"
    p.write_text("".join(f"{start + i},4100.5,0.25,1025.125,{t0 + i * 86_000},False,True\n"
                         for i in range(n)))
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    a = ap.parse_args()
    if not DAY.exists():
        print(f"missing {DAY} (../shared must sit beside the checkout)", file=sys.stderr)
        return 2
    times: dict[str, dict[str, list[float]]] = {}

    def record(what: str, which: str, dt: float) -> None:
        times.setdefault(what, {}).setdefault(which, []).append(dt)

    with throwaway_env() as env, tempfile.TemporaryDirectory() as tmp:
        dbs = {"C": Db(env, "bench_compressed"), "U": Db(env, "bench_uncompressed")}
        for k, d in dbs.items():
            dt, _ = d.cli("ingest", str(DAY))
            record("ingest the day (first time)", k, dt)
        c = dbs["C"]
        size = "SELECT hypertable_size('market_data.btc_ticks')"
        before = c.sql(size)[0][0]
        dt, out = c.cli("retention", "--json")
        actions = [x for r in json.loads(out)["primary"] for x in r["actions"]
                   if x["action"] == "compress"]
        after = c.sql(size)[0][0]
        stats = c.sql("SELECT sum(before_compression_total_bytes)::float8, "
                      "sum(after_compression_total_bytes)::float8 "
                      "FROM chunk_compression_stats('market_data.btc_ticks')")[0]
        print(f"\ncompression by retention: {sum(x['chunks'] for x in actions)} chunk(s), "
              f"{sum(x['rows'] for x in actions):,} rows in {dt:.1f} s (the CLI run)")
        print(f"  chunk {stats[0] / 1e6:.1f} MB -> {stats[1] / 1e6:.1f} MB: ratio "
              f"{stats[0] / stats[1]:.1f}x; hypertable {before / 1e6:.1f} -> {after / 1e6:.1f} MB")
        if not actions or not actions[0].get("chunks"):
            print("retention compressed nothing: is TimescaleDB licensed?", file=sys.stderr)
            return 1

        for rnd in range(a.rounds):
            order = ("C", "U") if rnd % 2 == 0 else ("U", "C")
            late = late_file(Path(tmp), start=300_000_000 + rnd * 1_000)
            for k in order:
                d = dbs[k]
                record("re-ingest the day (all duplicates)", k, d.cli("ingest", str(DAY))[0])
                record("late trades: 500 new ids into old buckets", k,
                       d.cli("ingest", str(late))[0])
                record("landing replay, every bucket", k,
                       d.cli("ingest", f"s3://{d.bucket}/raw/spot/BTCUSDT/")[0])
                record("replicate: full catch-up of an empty replica", k,
                       d.cli("replicate", TICKSTACK_REPLICA_DSN=replica_db(env))[0])
                d.sql("DELETE FROM signals.btc_embeddings")
                record("embed every window from scratch", k, d.cli("embed")[0])
                record("similar (one query)", k,
                       d.cli("similar", "--at", "2019-04-01T15:02:00Z", "-k", "10")[0])
        same = [d.sql("SELECT count(*), sum(quantity) FROM market_data.btc_ticks")[0]
                for d in dbs.values()]
        print(f"  both databases hold {same[0][0]:,} ticks; equal: {same[0] == same[1]}")

    print("\nmedian seconds, compressed (C) vs uncompressed (U), and the ratio C / U")
    ratios: dict[str, dict] = {}
    for what, rows in times.items():
        cm, um = statistics.median(rows["C"]), statistics.median(rows["U"])
        print(f"  {what:<48} C {cm:6.2f} s  U {um:6.2f} s  {cm / um:5.2f}x")
        ratios[what] = {"compressed_s": cm, "uncompressed_s": um, "ratio": round(cm / um, 3)}
    save("compression", {"chunk_bytes_before": stats[0], "chunk_bytes_after": stats[1],
                         "ratio": round(stats[0] / stats[1], 2), "compress_cli_s": round(dt, 2),
                         "paths": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
