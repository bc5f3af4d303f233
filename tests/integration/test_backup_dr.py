"""Backup and disaster-recovery drills on an environment of their own (the primary is destroyed).

Ingest part 1 of the real day, let retention compress its chunk (licensed TimescaleDB, as in
production), full backup of the compressed data, part 2, note T, part 3 (both merged into the
compressed chunk); destroy the primary's data directory; `restore --target-time T` gives exactly
parts 1-2 from WAL, and with the landing replay parts 1-3 — per-bucket checksums identical to
before the disaster, and the chunk restored compressed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from infra.configs import STANZA
from infra.local.env import BACKUP_BUCKET, LocalEnv
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


def cli(env: LocalEnv, *args: str, timeout: float = 600,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                          env={**os.environ, **env.env(), "TICKSTACK_LOG_FORMAT": "json",
                               **(extra_env or {})},
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
        # Bounded by the check's deadline (TICKSTACK_ARCHIVE_CHECK_SECONDS, 75 s by default);
        # a hang fails on this test's timeout.
        t0 = time.monotonic()
        r = cli(env, "backup", "--check", timeout=300,
                extra_env={"TICKSTACK_ARCHIVE_CHECK_SECONDS": "20"})
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "UNHEALTHY" in r.stdout and "pgbackrest check failed" in r.stdout
        assert time.monotonic() - t0 < 60, "the check outlived its 20 s deadline"
    finally:
        env.stunnel.start()


# --- issue 21: holes in the WAL archive, restores that cannot succeed ----------------------

def repo_info(env: LocalEnv) -> dict:
    r = env.pgbackrest("info", "--output=json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]


def ensure_backup(env: LocalEnv) -> None:
    ok(env, "migrate")
    if not repo_info(env).get("backup"):
        ok(env, "backup", "--type", "full")


def backup_s3(env: LocalEnv):
    from infra.local.s3 import s3_client

    return s3_client(env.moto.endpoint)


def s3_keys(env: LocalEnv, prefix: str) -> list[str]:
    pages = backup_s3(env).get_paginator("list_objects_v2").paginate(
        Bucket=BACKUP_BUCKET, Prefix=prefix)
    return [o["Key"] for p in pages for o in p.get("Contents", [])]


def switch_wal(env: LocalEnv, n: int) -> None:
    with admin(env) as c:
        c.autocommit = True
        c.execute("CREATE TABLE IF NOT EXISTS public.wal_filler (x int)")
        for i in range(n):
            c.execute("INSERT INTO public.wal_filler VALUES (%s)", [i])
            c.execute("SELECT pg_switch_wal()")


def primary_started(env: LocalEnv):
    with admin(env) as c:
        return c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


def test_backup_check_fails_on_wal_missing_from_the_archive(env):
    """Issue 21 #6: a segment lost from the archive (the S3 server lost it) between the oldest
    backup and the newest archived WAL fails the check, naming it; a newer full backup is
    named as unaffected; once the backups before the hole are expired the check passes."""
    ensure_backup(env)
    # A full backup of its own: earlier tests' restores may have left the newest set on an
    # older timeline, and the segments looked for below follow this one.
    ok(env, "backup", "--type", "full")
    switch_wal(env, 4)
    out = ok(env, "backup", "--check")
    assert "WAL archive: contiguous" in out
    info = repo_info(env)
    newest = info["backup"][-1]
    start = newest["archive"]["start"]
    # A segment recovery from the newest backup replays (after its start), on its timeline.
    segs = sorted(k for k in s3_keys(env, f"pgbackrest/archive/{STANZA}/")
                  if re.search(r"/[0-9A-F]{24}-[0-9a-f]{40}\.zst$", k)
                  and k.rsplit("/", 1)[-1][:8] == start[:8]
                  and k.rsplit("/", 1)[-1][:24] > start)
    assert len(segs) >= 3, segs
    lost = segs[1].rsplit("/", 1)[-1][:24]
    backup_s3(env).delete_object(Bucket=BACKUP_BUCKET, Key=segs[1])

    r = cli(env, "backup", "--check")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "UNHEALTHY" in r.stdout and "WAL archive: HOLES" in r.stdout
    assert f"WAL segment {lost} is missing from the archive" in r.stdout
    assert "point-in-time recovery cannot pass" in r.stdout and "Traceback" not in r.stderr

    # A fresh full backup does not mend the older backups' recovery window...
    ok(env, "backup", "--type", "full")
    labels = [b["label"] for b in repo_info(env)["backup"]]
    r = cli(env, "backup", "--check")
    assert r.returncode == 1 and f"not affected: backup {labels[-1]}" in r.stdout, r.stdout
    # ...expiring the backups that need the lost segment does.
    for label in labels[:-1]:
        x = env.pgbackrest("expire", f"--set={label}")
        assert x.returncode == 0, x.stderr
    out = ok(env, "backup", "--check")
    assert "archive: healthy" in out and "WAL archive: contiguous" in out


def test_restore_refuses_before_touching_the_primary(env):
    """Issue 21 #10: with --force, a target that cannot be reached is refused (exit 2) while
    the primary is still up: a target before the first backup, a future one; and with the
    primary down, one after the last archived commit. Nothing is stopped or moved."""
    ensure_backup(env)
    before, started = checksums(env), primary_started(env)
    siblings = sorted(p.name for p in env.primary.data.parent.iterdir())
    first_stop = repo_info(env)["backup"][0]["timestamp"]["stop"]
    too_early = datetime.fromtimestamp(first_stop - 600, UTC).isoformat()
    r = cli(env, "restore", "--force", "--target-time", too_early)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "no backup set finished before the target" in r.stderr
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = cli(env, "restore", "--force", "--target-time", future)
    assert r.returncode == 2 and "is in the future" in r.stderr, r.stderr
    assert primary_started(env) == started and checksums(env) == before
    assert sorted(p.name for p in env.primary.data.parent.iterdir()) == siblings

    # Primary down (the disaster case): nothing after its last archived commit can be reached.
    env.primary.stop()
    try:
        r = cli(env, "restore", "--target-time", datetime.now(UTC).isoformat())
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "is after the last archived commit" in r.stderr
        assert sorted(p.name for p in env.primary.data.parent.iterdir()) == siblings
    finally:
        env.primary.start(env=env.pgbackrest_env())
    assert checksums(env) == before


def test_failed_restore_puts_the_primary_back(env):
    """Issue 21 #10: a restore that fails after the primary was stopped and moved aside (here:
    a file of the backup set is gone from S3) puts the old data directory back and starts it:
    exit 1, the primary up with its data. (Last in this module: it breaks the backup set.)"""
    ensure_backup(env)
    switch_wal(env, 1)
    before = checksums(env)
    label = repo_info(env)["backup"][-1]["label"]
    # Files of the set: big ones under pg_data/, small ones in bundles (repo1-bundle).
    files = [k for k in s3_keys(env, f"pgbackrest/backup/{STANZA}/{label}/")
             if "/pg_data/base/" in k or "/bundle/" in k]
    assert files, f"backup set {label} holds no data files in the repository"
    backup_s3(env).delete_object(Bucket=BACKUP_BUCKET, Key=files[len(files) // 2])
    time.sleep(1.1)
    target = datetime.now(UTC).isoformat()
    r = cli(env, "restore", "--force", "--target-time", target)
    assert r.returncode == 1, (r.stdout, r.stderr)
    reason = r.stderr.strip().splitlines()[-1]  # one line after the JSON log lines
    assert reason.startswith("restore: pgbackrest restore failed"), r.stderr
    assert "the old primary is back in place and running" in reason
    assert "Traceback" not in r.stderr
    assert env.primary.healthy() and checksums(env) == before
    failed = [p for p in env.primary.data.parent.iterdir() if ".failed-restore-" in p.name]
    assert len(failed) == 1
    shutil.rmtree(failed[0])
    # It still archives: the check's fresh WAL switch reaches the repository.
    assert "archive: healthy" in ok(env, "backup", "--check")
