"""Backup benchmark: pgBackRest full backups against the floor measured in the same run.

    .venv/bin/python bench/backup.py [--rounds 2] [--days N]

On a throwaway local environment (own clusters and S3 under /tmp) the real Binance day in
../shared/data is migrated and ingested into the primary. Then, per round and alternating the
order, on the same primary and the same S3 server (moto behind the TLS terminator):

  * floor — `tar` of the data directory through `zstd -1 -T2`, uploaded as ONE object: what
    moving these bytes costs with one request;
  * full backup as rendered (infra/configs.py: file bundling on, zst, 2 processes);
  * full backup with one repository object per file (bundling switched off on the command line):
    what the request count cost before bundling.

Expiry of older backup sets (which pgBackRest runs after each backup) runs untimed between
runs; each backup's phases (checks, checkpoint, copy, stop, manifest) are printed from its log.

It prints each time, the ratios backup / floor (goal: <= 2x with bundling) and the objects each
wrote. The same is then measured after retention compressed the day's chunk (licensed
TimescaleDB), and the compressed cluster's newest backup is restored into an empty directory
against the reverse floor (one GET, zstd -d, tar x). Last, block incremental (off by default)
is measured against bundling alone: a full backup and its restore each.

With --days N, N generated 2024 days (bench/monthgen.py, cached under .tickstack/) are ingested
on top and the bundled backup is measured against the floor once more: a backup's fixed part
(pgBackRest waits for the database clock's next second, then checkpoints, checks and writes
its manifest: ~1 s) weighs less as the database grows, and this shows where the ratio lands.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, save, throwaway_env  # noqa: E402,I001

import boto3  # noqa: E402
import urllib3  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.config import Config  # noqa: E402

from infra.configs import STANZA  # noqa: E402
from infra.local.env import BACKUP_BUCKET  # noqa: E402
from infra.local.procs import chown_db, make_db_dir  # noqa: E402
from infra.local.s3 import MOTO_KEY, MOTO_SECRET  # noqa: E402

# The floor goes through the same TLS terminator as pgBackRest, with its self-signed certificate
# (pgBackRest: repo1-storage-verify-tls=n); loopback only.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
DAY = REPO.parent / "shared" / "data" / "BTCUSDT-trades-2019-04-01.zip"
FLOOR_KEY = "bench/floor.tar.zst"


def cli(env, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                       env={**os.environ, **env.env(), "TICKSTACK_LOG_FORMAT": "json",
                            "TICKSTACK_LOG_LEVEL": "warning"},
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"workers {' '.join(args)} failed ({r.returncode}):\n"
                         f"{r.stdout}\n{r.stderr[-3000:]}")
    return r.stdout


def s3_tls(env):
    """The S3 server through the TLS terminator pgBackRest uses (same path, same costs)."""
    return boto3.client(
        "s3", endpoint_url=f"https://127.0.0.1:{env.ports['s3_tls']}", region_name="us-east-1",
        aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_SECRET, verify=False,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      read_timeout=600))


def floor(env) -> tuple[float, int]:
    """tar | zstd -1 -T2 of the data directory into memory, then one object. (seconds, bytes)"""
    t0 = time.monotonic()
    tar = subprocess.Popen(["tar", "-C", str(env.primary.data), "-cf", "-", "."],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    data = subprocess.run(["zstd", "-1", "-T2", "-c"], stdin=tar.stdout, capture_output=True,
                          check=True).stdout
    tar.wait()
    if tar.returncode not in (0, 1):  # 1: a file changed while read (a live cluster)
        raise SystemExit(f"tar failed ({tar.returncode})")
    # One object: a single PUT up to 64 MB (the real day's is ~11 MB), beyond that a multipart
    # upload of 16 MB parts, two at a time, as pgBackRest's own uploads are (one large PUT
    # stalls moto's server past any timeout).
    s3_tls(env).upload_fileobj(io.BytesIO(data), BACKUP_BUCKET, FLOOR_KEY, Config=TransferConfig(
        multipart_threshold=64 * 2**20, multipart_chunksize=16 * 2**20, max_concurrency=2))
    return time.monotonic() - t0, len(data)


def reverse_floor(env, dest: Path) -> float:
    """One GET of the floor object, zstd -d, tar x into an empty directory."""
    t0 = time.monotonic()
    body = s3_tls(env).get_object(Bucket=BACKUP_BUCKET, Key=FLOOR_KEY)["Body"].read()
    dest.mkdir()
    unz = subprocess.run(["zstd", "-d", "-c"], input=body, capture_output=True, check=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", "-"], input=unz.stdout, check=True)
    return time.monotonic() - t0


PHASES = (  # pgBackRest log lines that open each phase of a backup, in order
    ("start and checks", "backup command begin"),
    ("checkpoint", "execute non-exclusive backup start"),
    ("copy files", "backup start archive ="),
    ("stop, WAL archived", "execute non-exclusive backup stop"),
    ("manifest, info", "new backup label ="),
    ("", "backup command end"),
)


def phases(log: str) -> dict[str, float]:
    """Seconds per phase, from the timestamps of pgBackRest's console log."""
    stamps = []
    for name, marker in PHASES:
        line = next((x for x in log.splitlines() if marker in x), None)
        if line is None:
            return {}
        stamps.append((name, datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")))
    return {a[0]: (b[1] - a[1]).total_seconds()
            for a, b in zip(stamps, stamps[1:], strict=False)}


def objects(env, label: str) -> int:
    """Repository objects of one backup set."""
    s3 = s3_tls(env)
    prefix = f"pgbackrest/backup/{STANZA}/{label}/"
    return sum(len(p.get("Contents", [])) for p in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BACKUP_BUCKET, Prefix=prefix))


def backup(env, *extra: str) -> tuple[float, int, dict[str, float]]:
    """A full backup; (seconds, repository objects it wrote, seconds per phase)."""
    t0 = time.monotonic()
    r = env.pgbackrest("backup", "--type=full", "--log-level-console=info", "--no-expire-auto",
                       *extra, timeout=1800)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"pgbackrest backup {' '.join(extra)} failed:\n{r.stdout}{r.stderr}")
    label = re.search(r"new backup label = (\S+)", r.stdout).group(1)
    n = objects(env, label)
    # Expiry of older sets runs after each backup in production (expire-auto); here it runs
    # untimed, so a run is not charged for deleting the sets of the runs before it.
    e = env.pgbackrest("expire", timeout=600)
    if e.returncode != 0:
        raise SystemExit(f"pgbackrest expire failed:\n{e.stdout}{e.stderr}")
    return dt, n, phases(r.stdout)


def restore(env, dest: Path) -> float:
    """The newest backup restored into an empty directory (the primary keeps running)."""
    make_db_dir(dest, 0o700)
    t0 = time.monotonic()
    r = env.pgbackrest("restore", f"--pg1-path={dest}", "--type=none", "--archive-mode=off",
                       timeout=1800)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"pgbackrest restore failed:\n{r.stdout}{r.stderr}")
    return dt


def database_mb(env) -> float:
    return int(env.primary.psql("SELECT pg_database_size('tickstack')")) / 1e6


def measure(env, rounds: int, label: str, *, per_file: bool) -> dict:
    runs: dict[str, list[float]] = {"floor": [], "bundled": [], "per-file": []}
    written: dict[str, int] = {}
    split: dict[str, dict[str, float]] = {}
    size = 0
    for i in range(rounds):
        order = ["floor", "bundled", "per-file"] if i % 2 == 0 else \
            ["per-file", "bundled", "floor"]
        for what in order:
            if what == "floor":
                dt, size = floor(env)
            elif what == "bundled":
                dt, written[what], split[what] = backup(env)
            elif per_file:
                dt, written[what], split[what] = backup(env, "--no-repo1-bundle")
            else:
                continue
            runs[what].append(dt)
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    print(f"\n{label}: database {database_mb(env):.1f} MB; floor object "
          f"{size / 1e6:.1f} MB (tar | zstd -1 -T2, one PUT)")
    print(f"  floor                            {med['floor']:6.1f} s")
    for k in ("bundled", "per-file"):
        if k in med:
            print(f"  full backup, {k:<19} {med[k]:6.1f} s = {med[k] / med['floor']:.1f}x "
                  f"floor, {written[k]} repository objects"
                  + ("   (goal <= 2x)" if k == "bundled" else ""))
            print("      last run by phase: " + ", ".join(
                f"{p} {t:.1f} s" for p, t in split[k].items()))
    print("  runs: " + "; ".join(f"{k} " + ", ".join(f"{x:.1f}" for x in v)
                                 for k, v in runs.items() if v))
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    ap.add_argument("--days", type=int, default=0,
                    help="then ingest N generated days and measure again (default 0: off)")
    a = ap.parse_args()
    if a.days < 0:
        ap.error("--days must be >= 0")
    if not DAY.exists():
        print(f"missing {DAY} (../shared must sit beside the checkout)", file=sys.stderr)
        return 2
    with throwaway_env() as env:
        cli(env, "migrate")
        cli(env, "ingest", str(DAY))
        env.primary.psql("CHECKPOINT")
        plain = measure(env, a.rounds, "uncompressed day", per_file=True)
        out = json.loads(cli(env, "retention", "--json"))
        compressed = sum(a.get("chunks", 0) for r in out["primary"] for a in r["actions"]
                         if a["action"] == "compress")
        env.primary.psql("CHECKPOINT")
        comp = measure(env, a.rounds, "after retention compressed the day's chunk",
                       per_file=False)
        scratch = Path(tempfile.mkdtemp(prefix="tickstack-bench-restore-", dir="/tmp"))
        os.chmod(scratch, 0o755)
        try:
            chown_db(scratch, 0o755)
            rt = restore(env, scratch / "restore")
            rf = reverse_floor(env, scratch / "floor")
            # Block incremental (opt-in, infra/configs.py): a full backup in block format and
            # its restore, against the bundled pair measured just before it.
            bt, _, _ = backup(env)
            brt = restore(env, scratch / "bundled")
            kt, _, _ = backup(env, "--repo1-block")
            krt = restore(env, scratch / "block")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"\nblock incremental (off by default): full backup {kt:.1f} s (bundled {bt:.1f} s), "
              f"its restore {krt:.1f} s (bundled {brt:.1f} s): a block-format restore reads file "
              "by file")
        print(f"\nrestore of the compressed cluster's newest backup: {rt:.1f} s = "
              f"{rt / rf:.1f}x the reverse floor ({rf:.1f} s: one GET, zstd -d, tar x)")
        larger = None
        if a.days:
            import monthgen

            files = monthgen.generate(REPO / ".tickstack" / "bench-backup-days",
                                      monthgen.Spec(days=a.days))
            t0 = time.monotonic()
            cli(env, "ingest", *map(str, files))
            print(f"\ningested {a.days} generated day(s) in {time.monotonic() - t0:.0f} s")
            env.primary.psql("CHECKPOINT")
            big = measure(env, a.rounds, f"with {a.days} generated day(s) more", per_file=False)
            larger = {"days": a.days, "database_mb": round(database_mb(env), 1), **big,
                      "bundled_vs_floor": round(big["bundled"] / big["floor"], 2)}
        print(f"\nsummary: bundled full backup = {plain['bundled'] / plain['floor']:.1f}x floor "
              f"(per-file {plain['per-file'] / plain['floor']:.1f}x); after compression "
              f"{comp['bundled'] / comp['floor']:.1f}x"
              + f" ({compressed} chunk(s) compressed)"
              + (f"; with {larger['days']} generated day(s), {larger['database_mb']:.0f} MB: "
                 f"{larger['bundled_vs_floor']:.1f}x" if larger else ""))
        save("backup", {"uncompressed_s": plain, "compressed_s": comp,
                        "chunks_compressed": compressed, "restore_compressed_s": round(rt, 2),
                        "reverse_floor_s": round(rf, 2),
                        "bundled_vs_floor": round(plain["bundled"] / plain["floor"], 2),
                        "per_file_vs_floor": round(plain["per-file"] / plain["floor"], 2),
                        "compressed_bundled_vs_floor": round(comp["bundled"] / comp["floor"], 2),
                        "restore_vs_reverse_floor": round(rt / rf, 2),
                        "block_incremental_s": {"backup": round(kt, 2), "restore": round(krt, 2),
                                                "bundled_backup": round(bt, 2),
                                                "bundled_restore": round(brt, 2)},
                        "larger": larger})
    return 0


if __name__ == "__main__":
    sys.exit(main())
