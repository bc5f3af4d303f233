"""Backup and disaster-recovery drills on an environment of their own (the primary is destroyed).

Ingest part 1 of the real day, let retention compress its chunk (licensed TimescaleDB, as in
production), full backup of the compressed data, part 2, note T, part 3 (both merged into the
compressed chunk); destroy the primary's data directory; `restore --target-time T` gives exactly
parts 1-2 from WAL, and with the landing replay parts 1-3 — per-bucket checksums identical to
before the disaster, and the chunk restored compressed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from infra.local.env import LocalEnv
from tests.conftest import REPO, make_state_dir
from tests.integration.pipeline import BUCKET_CHECKSUMS

DAY = "BTCUSDT-trades-2019-04-01"


@pytest.fixture(scope="module")
def env():
    e = LocalEnv(make_state_dir())
    try:
        e.up()
        yield e
    finally:
        try:
            e.down(save_s3=False)
        finally:
            shutil.rmtree(e.state, ignore_errors=True)


def cli(env: LocalEnv, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                          env={**os.environ, **env.env(), "TICKSTACK_LOG_FORMAT": "json"},
                          capture_output=True, text=True, timeout=timeout)


def ok(env: LocalEnv, *args: str, timeout: float = 600) -> str:
    r = cli(env, *args, timeout=timeout)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout


def admin(env: LocalEnv) -> psycopg.Connection:
    return psycopg.connect(env.primary.dsn(), password=env.secrets["postgres_password"])


def checksums(env: LocalEnv) -> list[tuple]:
    with admin(env) as c:
        return c.execute(BUCKET_CHECKSUMS).fetchall()


def compressed_chunks(env: LocalEnv) -> int:
    with admin(env) as c:
        return c.execute("SELECT count(*) FROM timescaledb_information.chunks "
                         "WHERE hypertable_name = 'btc_ticks' AND is_compressed").fetchone()[0]


def parts(shared_data: Path, tmp: Path) -> list[Path]:
    """The day's CSV cut at 08:00 and 16:00 UTC, each a file of its own."""
    cuts = [1_554_076_800_000 + h * 3_600_000 for h in (8, 16)]  # 2019-04-01 08:00, 16:00
    out = [[], [], []]
    for line in (shared_data / f"{DAY}.csv").read_text().splitlines():
        t = int(line.split(",")[4])
        out[sum(t >= c for c in cuts)].append(line)
    paths = []
    for i, lines in enumerate(out, 1):
        p = tmp / f"BTCUSDT-trades-2019-04-01-part{i}.csv"
        p.write_text("\n".join(lines) + "\n")
        paths.append(p)
    return paths


def test_backup_check_and_dr_rebuild(env, shared_data, tmp_path):
    p1, p2, p3 = parts(shared_data, tmp_path)
    ok(env, "migrate")
    ok(env, "ingest", str(p1))
    ok(env, "retention")  # the shipped job compresses the 2019 chunk
    assert compressed_chunks(env) >= 1
    out = ok(env, "backup", "--type", "full")
    assert "backup: full" in out
    ok(env, "ingest", str(p2))
    before_t = checksums(env)
    with admin(env) as c:
        target = c.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(1.1)
    ok(env, "ingest", str(p3))
    full = checksums(env)
    assert len(full) > len(before_t)
    # Archiving is healthy, and the WAL past T reaches the repository (check switches WAL).
    out = ok(env, "backup", "--check")
    assert "archive: healthy" in out and "1 backups" in out

    # A healthy primary is never overwritten without --force.
    r = cli(env, "restore", "--target-time", target.isoformat())
    assert r.returncode == 2 and "running and healthy" in r.stderr
    assert checksums(env) == full

    # Disaster: the primary's data directory is gone.
    env.primary.stop()
    shutil.rmtree(env.primary.data)
    out = ok(env, "restore", "--target-time", target.isoformat(), "--no-replay")
    assert "pgbackrest restore" in out and "WAL replay up to the target" in out
    assert checksums(env) == before_t  # exactly parts 1-2, from the backup and WAL
    assert compressed_chunks(env) >= 1  # restored compressed, not rewritten

    out = ok(env, "restore", "--target-time", target.isoformat(), "--skip-pitr")
    assert "landing replay after the target" in out
    assert checksums(env) == full  # nothing landed was lost
    # A second replay finds nothing to do.
    out = ok(env, "restore", "--target-time", target.isoformat(), "--skip-pitr")
    assert "— 0 landing objects, 0 rows" in out
    # The rebuilt primary archives again.
    out = ok(env, "backup", "--check")
    assert "archive: healthy" in out


def test_backup_check_fails_when_archiving_is_broken(env):
    ok(env, "migrate")
    # pgBackRest reaches S3 only through the TLS terminator: stopping it is the S3 server
    # gone, as far as archiving can tell (without losing moto's in-memory backups).
    env.stunnel.stop()
    try:
        # Bounded: the check's own archive timeout ends it; a hang fails on this timeout.
        r = cli(env, "backup", "--check", timeout=300)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "UNHEALTHY" in r.stdout and "pgbackrest check failed" in r.stdout
    finally:
        env.stunnel.start()
