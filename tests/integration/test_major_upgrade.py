"""A state of the previous build (the version table's PG_PREVIOUS_MAJOR with its TimescaleDB and
pgvector) is upgraded in place by `up` (infra/local/upgrade.py → scripts/pg_major_upgrade.sh)
and nothing is lost.

The old state is made by the normal code on the previous binaries (LocalEnv(pg_bin=…), what
TICKSTACK_PG_BIN does) and the real workers: migrate, ingest with bad rows (quarantined), embed
(ivfflat index), retention (the chunk compressed), stream offsets, a full backup. After `up` on
the table's build: per-bucket tick digests, OHLCV, registry, quarantine, offsets, retention jobs
and kNN answers are identical; the extensions are the table's; compression works; a late trade
reaches the compressed chunk through ingest; `backup --check` is healthy on the upgraded stanza;
a point-in-time restore to a time after the upgrade gives exactly the state of that time; the
replica is equal (`replicate --check`). A second old state is killed at several points of its
upgrade (SIGTERM while pg_upgrade runs, SIGKILL after pg_upgrade linked, mid-swap, with the new
cluster running) and each next `up` continues until it completes with the same digests.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from infra import versions
from infra.local import upgrade
from infra.local.env import LocalEnv
from infra.local.postgres import Cluster
from infra.local.procs import PartError, free_port, make_db_dir, run_db
from tests.conftest import REPO, make_state_dir
from tests.integration.pipeline import BUCKET_CHECKSUMS
from workers.db.load import advance_offset
from workers.signals import similar

V = versions.load()
DAY = "BTCUSDT-trades-2019-04-01"
T0 = 1_554_076_800_000  # 2019-04-01 00:00 UTC, ms
HOUR = 3_600_000
# Bad rows (each class quarantined with its line), appended to the first slice.
BAD = ["2001,abc,0.1,1.0,{t},True,True", "2004,-4100,0.1,1.0,{t},True,True",
       "2011,4100,0.1,1.0", "x12,4100,0.1,1.0,{t},True,True"]
# Small enough for a test, big enough for an ivfflat index over the day's windows.
WORKER_EXTRA = {"TICKSTACK_VECTOR_INDEX_MIN_ROWS": "20"}

STATE_SQL = {
    "registry": "SELECT asset, bucket_5m, metadata->>'sha256', ingested_tick_span "
                "FROM landing.raw_blobs_5m ORDER BY 1, 2",
    "ohlcv": "SELECT symbol, bucket_5m, open, high, low, close, volume, quote_volume, "
             "trade_count, buy_volume, first_trade_id, last_trade_id "
             "FROM market_data.btc_ohlcv_5m ORDER BY 1, 2",
    "quarantine": "SELECT market, symbol, file_sha256, file_name, rows_read, accepted, "
                  "quarantined, quarantine_uri FROM ingestion.file_loads ORDER BY 3",
    "offsets": "SELECT source, market, symbol, last_trade_id, last_event_time "
               "FROM ingestion.stream_offsets ORDER BY 1, 2, 3",
    "retention_jobs": "SELECT * FROM ops.retention_jobs ORDER BY 1",
    "embeddings": "SELECT count(*), md5(string_agg(feature_vector::text, ',' ORDER BY "
                  "bucket)) FROM signals.btc_embeddings",
}


def slices(shared_data: Path, tmp: Path) -> list[Path]:
    """Hours 0-5 (with the bad rows), 5-6 and 6-7 of the real day, a file each."""
    bounds = [(0, 5), (5, 6), (6, 7)]
    out: list[list[str]] = [[] for _ in bounds]
    for line in (shared_data / f"{DAY}.csv").read_text().splitlines():
        t = int(line.split(",")[4])
        for i, (a, b) in enumerate(bounds):
            if T0 + a * HOUR <= t < T0 + b * HOUR:
                out[i].append(line)
    out[0] += [b.format(t=T0 + 2 * HOUR) for b in BAD]
    paths = []
    for i, lines in enumerate(out, 1):
        p = tmp / f"{DAY}-slice{i}.csv"
        p.write_text("\n".join(lines) + "\n")
        paths.append(p)
    return paths


def cli(env: LocalEnv, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                          env={**os.environ, **env.env(), "TICKSTACK_LOG_FORMAT": "json",
                               **WORKER_EXTRA},
                          capture_output=True, text=True, timeout=timeout)


def ok(env: LocalEnv, *args: str) -> str:
    r = cli(env, *args)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout


def admin(env: LocalEnv, cluster: str = "primary") -> psycopg.Connection:
    c = env.primary if cluster == "primary" else env.replica
    return psycopg.connect(c.dsn(), password=env.secrets["postgres_password"], autocommit=True)


def snapshot(env: LocalEnv) -> dict[str, list]:
    with admin(env) as c:
        out = {"ticks": c.execute(BUCKET_CHECKSUMS).fetchall()}
        out.update({k: c.execute(q).fetchall() for k, q in STATE_SQL.items()})
    return out


def knn(env: LocalEnv) -> tuple[list, list]:
    """The ten nearest windows of a dozen of the day's windows, through the ivfflat index."""
    with admin(env) as c:
        register_vector(c)
        qs = c.execute("SELECT bucket, feature_vector FROM signals.btc_embeddings "
                       "ORDER BY bucket OFFSET 30 LIMIT 12").fetchall()
        answers, used = [], []
        for bucket, vec in qs:
            rows, probes = similar.nearest(c, np.asarray(vec.to_list(), dtype=np.float32),
                                           market="spot",
                                           symbol="BTCUSDT", upto=bucket, k=10)
            answers.append([(r[0], round(float(r[1]), 9)) for r in rows])
            used.append(probes)
    return answers, used


def extensions(env: LocalEnv, cluster: str = "primary") -> dict[str, str]:
    with admin(env, cluster) as c:
        return dict(c.execute("SELECT extname, extversion FROM pg_extension "
                              "WHERE extname IN ('timescaledb', 'vector')").fetchall())


def compressed_chunks(env: LocalEnv) -> list[str]:
    with admin(env) as c:
        return [r[0] for r in c.execute(
            "SELECT chunk_schema || '.' || chunk_name FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'btc_ticks' AND is_compressed ORDER BY 1").fetchall()]


def write_offset(env: LocalEnv, last_id: int, at_ms: int) -> None:
    """The stream worker's own statement, as its login (ingestion.stream_offsets)."""
    with psycopg.connect(env.primary.dsn(user="ingest_worker"),
                         password=env.secrets["ingest_worker"], autocommit=True) as c:
        advance_offset(c, "binance-ws", "spot", "BTCUSDT", last_id,
                       datetime.fromtimestamp(at_ms / 1000, UTC))


def old_state(shared_data: Path, tmp: Path, *, full: bool) -> tuple[LocalEnv, list[Path]]:
    """A local environment on the previous build holding the pipeline's data."""
    env = LocalEnv(make_state_dir("tickstack-upgrade-"), pg_bin=V.pg_previous_bindir)
    env.up()
    files = slices(shared_data, tmp)
    ok(env, "migrate")
    ok(env, "ingest", str(files[0]))
    if full:
        ok(env, "embed")
        ok(env, "retention")
        write_offset(env, 70_000_000, T0 + 5 * HOUR)
        ok(env, "backup", "--type", "full")
    return env, files


def drop(env: LocalEnv) -> None:
    try:
        env.down(save_s3=False)
    finally:
        shutil.rmtree(env.state, ignore_errors=True)


@pytest.fixture(scope="module")
def upgraded(shared_data, tmp_path_factory):
    """(env on the table's build after `up`, the old state's snapshot and kNN answers, the
    lines `up` printed, the slices)."""
    old, files = old_state(shared_data, tmp_path_factory.mktemp("slices"), full=True)
    try:
        assert extensions(old) == {"timescaledb": V.timescaledb_previous,
                                   "vector": V.pgvector_previous}
        assert compressed_chunks(old), "retention compressed the 2019 chunk"
        before, answers = snapshot(old), knn(old)
        assert any(p is not None for p in answers[1]), "the ivfflat index answered"
        assert len(before["quarantine"]) == 1 and before["quarantine"][0][6] == len(BAD)
        old.down()  # as after a reboot: `make up` finds everything stopped
        env = LocalEnv(old.state)  # the table's build
        lines = env.up()
        yield env, before, answers, lines, files
    finally:
        drop(old)


def test_up_upgrades_primary_and_replica_in_place_and_deletes_the_old_after_a_backup(upgraded):
    env, _before, _answers, lines, _files = upgraded
    text = "\n".join(lines)
    print(text)  # the measured durations (docs/upgrading.md quotes them)
    for name in ("primary", "replica"):
        assert f"{name}: PostgreSQL {V.pg_previous_major} -> {V.pg_major} in " in text
        assert "(pg_upgrade --link); old cluster kept until" in text  # ext4 here: no reflink
        c = getattr(env, name)
        assert (c.data / "PG_VERSION").read_text().strip() == V.pg_major
        assert upgrade.kept(c) == [] and not upgrade.marker(c).exists()
        assert f"{name}: old cluster {c.data}.pg{V.pg_previous_major} deleted" in text
    assert "primary: full backup on the new major" in text
    # Nothing left to do: a second `up` starts nothing and upgrades nothing.
    assert env.up() == []
    # What `make up` runs next: migrate rotates every worker login's password on both servers,
    # the replica's as its CREATEROLE admin (not a superuser, as on RDS) - which the new major
    # allows only on roles it holds WITH ADMIN OPTION; the upgrade keeps that for the roles
    # that came over from the old major.
    ok(env, "migrate")


def test_data_and_knn_answers_are_identical_and_extensions_are_the_tables(upgraded):
    env, before, answers, _lines, _files = upgraded
    assert snapshot(env) == before
    assert knn(env) == answers
    assert extensions(env) == {"timescaledb": V.timescaledb, "vector": V.pgvector}
    assert extensions(env, "replica") == {"vector": V.pgvector}
    with admin(env) as c:
        assert c.execute("SHOW server_version_num").fetchone()[0].startswith(V.pg_major)
        assert c.execute("SHOW data_checksums").fetchone()[0] == "on"
        assert c.execute("SHOW timescaledb.license").fetchone()[0] == "timescale"


def test_compression_late_trades_pitr_and_replica_after_the_upgrade(upgraded):
    env, before, _answers, _lines, files = upgraded
    chunks = compressed_chunks(env)
    assert chunks, "the chunk compressed on the previous major is still compressed"
    # Late trades into the compressed chunk, through the ingest path: counted.
    ok(env, "ingest", str(files[1]))
    first_late = int(files[1].read_text().split(",", 1)[0])
    with admin(env) as c:
        home = c.execute("SELECT tableoid::regclass::text FROM market_data.btc_ticks "
                         "WHERE trade_id = %s", [first_late]).fetchone()[0]
    assert home in chunks, (home, chunks)
    after_late = snapshot(env)
    assert len(after_late["ticks"]) > len(before["ticks"])
    late_rows = sum(1 for _ in files[1].read_text().splitlines())
    assert sum(r[1] for r in after_late["ticks"]) == sum(r[1] for r in before["ticks"]) \
        + late_rows
    # Compression itself works on the new build: the chunk is rewritten, nothing changes.
    with admin(env) as c:
        for ch in chunks:
            c.execute("SELECT decompress_chunk(%s::regclass)", [ch])
            c.execute("SELECT compress_chunk(%s::regclass)", [ch])
    assert compressed_chunks(env) == chunks and snapshot(env) == after_late

    # The upgraded stanza is healthy (its full backup was taken by `up`).
    out = ok(env, "backup", "--check")
    assert "archive: healthy" in out, out
    # A point-in-time restore to a time after the upgrade: exactly the state of that time.
    with admin(env) as c:
        target = c.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(1.1)
    ok(env, "ingest", str(files[2]))
    full = snapshot(env)
    assert len(full["ticks"]) > len(after_late["ticks"])
    ok(env, "backup", "--check")  # the WAL past the target reaches the repository
    env.primary.stop()
    shutil.rmtree(env.primary.data)
    out = ok(env, "restore", "--target-time", target.isoformat(), "--no-replay")
    assert "WAL replay up to the target" in out
    assert snapshot(env)["ticks"] == after_late["ticks"]
    assert compressed_chunks(env) == chunks
    ok(env, "restore", "--target-time", target.isoformat(), "--skip-pitr")
    assert snapshot(env)["ticks"] == full["ticks"]
    # The upgraded replica holds what the primary holds.
    ok(env, "replicate")
    out = ok(env, "replicate", "--check")
    with admin(env, "replica") as c:
        assert c.execute(BUCKET_CHECKSUMS).fetchall() == full["ticks"], out


def test_an_upgrade_killed_at_any_step_is_completed_by_the_next_up(shared_data, tmp_path,
                                                                   monkeypatch):
    old, _files = old_state(shared_data, tmp_path, full=False)
    try:
        before = snapshot(old)
        # Left running on the previous build: `up` stops its servers with their own binaries.
        env = LocalEnv(old.state)
        p = env.primary
        # SIGTERM while pg_upgrade runs: stopped like Ctrl-C (exit 130), the old cluster intact.
        monkeypatch.setenv("TICKSTACK_CRASH_AT", "upgrade-running:SIGTERM")
        with pytest.raises(PartError, match=r"failed \(exit 130\)"):
            env.up()
        assert (p.data / "PG_VERSION").read_text().strip() == V.pg_previous_major
        assert upgrade.marker(p).exists()
        # SIGKILL after pg_upgrade linked the files, before the swap; then mid-swap (the old
        # directory moved aside, the new one not yet in place); then with the new cluster
        # running on its private socket. Each next `up` continues where the last one died.
        for point, check in (
                ("upgrade-linked", lambda: (p.data / "global" / "pg_control.old").exists()),
                ("swap-half", lambda: not p.data.exists()),
                ("post-started", lambda: (p.data / "postmaster.pid").exists())):
            monkeypatch.setenv("TICKSTACK_CRASH_AT", point)
            with pytest.raises(PartError, match=r"failed \(exit -9\)|failed \(exit 137\)"):
                env.up()
            assert check(), point
            assert upgrade.marker(p).exists()
        monkeypatch.delenv("TICKSTACK_CRASH_AT")
        # The last run through the command `make up` runs: a line per upgraded cluster.
        r = subprocess.run([sys.executable, "-m", "infra.local", "--state-dir", str(env.state),
                            "up"], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (r.stdout, r.stderr)
        for name in ("primary", "replica"):
            assert re.search(rf"^{name}: PostgreSQL {V.pg_previous_major} -> {V.pg_major} in "
                             r"\d+ s \(pg_upgrade --link\); old cluster kept until ",
                             r.stdout, re.M), r.stdout
            assert f"{name}: old cluster {getattr(env, name).data}.pg" in r.stdout
        assert not upgrade.marker(p).exists() and upgrade.kept(p) == []
        assert (p.data / "PG_VERSION").read_text().strip() == V.pg_major
        assert snapshot(env) == before
    finally:
        drop(old)


# --- the script's interface (scripts/pg_major_upgrade.sh), as the cloud's Job uses it ------------

def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return run_db(["bash", upgrade.db_user_script(), *args], check=False, timeout=600)


@contextlib.contextmanager
def old_cluster() -> Iterator[tuple[Cluster, str, str, str]]:
    """A fresh, stopped cluster on the previous build in a throwaway directory: (the cluster,
    its data directory, the previous and the table's bin directories)."""
    root = make_state_dir("tickstack-pgup-")
    try:
        c = Cluster("old", root / "old", free_port(), root / "run", "pw",
                    bindir=V.pg_previous_bindir)
        c.init()
        make_db_dir(c.socket_dir)
        yield c, str(c.data), str(V.pg_previous_bindir), str(V.pg_bindir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_script_refuses_bad_usage_and_a_running_cluster_and_recovers_a_crashed_one():
    with old_cluster() as (c, data, old_bin, new_bin):
        assert _script().returncode == 2
        r = _script("--data", data, "--old-bindir", old_bin, "--new-bindir", new_bin,
                    "--mode", "fast")
        assert r.returncode == 2 and "--mode fast" in r.stderr
        r = _script("--data", data, "--old-bindir", new_bin, "--new-bindir", old_bin)
        assert r.returncode == 2 and "an upgrade goes to a newer major" in r.stderr
        args = ("--data", data, "--old-bindir", old_bin, "--new-bindir", new_bin)
        # A running server is never touched.
        run_db([old_bin + "/pg_ctl", "-D", data, "-l", str(c.log), "-w", "-o",
                f"-c listen_addresses='' -c unix_socket_directories='{c.socket_dir}' "
                f"-c port={c.port}", "start"])
        # Column options: Debian's previous major adds its own to every column (pg_attver),
        # which the new one rejects; the ones it knows (n_distinct) must come through.
        psql = [old_bin + "/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h",
                str(c.socket_dir), "-p", str(c.port), "-d", "postgres", "-c"]
        run_db([*psql, "CREATE TABLE t (a int, b int); ALTER TABLE t ALTER COLUMN a SET "
                "(n_distinct = 100); INSERT INTO t SELECT i, i FROM generate_series(1, 10) i"])
        run_db([*psql, "ALTER SYSTEM SET work_mem = '7MB'"])  # pg_upgrade does not carry it
        r = _script(*args)
        assert r.returncode == 1 and "in use by a running server" in r.stderr, r.stderr
        assert (c.data / "PG_VERSION").read_text().strip() == V.pg_previous_major
        # A crashed one (not shut down cleanly) is recovered with its own binaries first.
        run_db([old_bin + "/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"])
        r = _script(*args)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "was not shut down cleanly" in r.stdout
        for step in ("check old cluster", "initdb new cluster", "pg_upgrade --check",
                     "pg_upgrade --link", "swap directories",
                     "update extensions and statistics"):
            assert re.search(rf"step: {re.escape(step)} done in \d+ s", r.stdout), step
        assert (c.data / "PG_VERSION").read_text().strip() == V.pg_major
        r = _script(*args)
        assert r.returncode == 0 and f"already PostgreSQL {V.pg_major}" in r.stdout
        new_ctl = [new_bin + "/pg_ctl", "-D", data, "-l", str(c.log), "-w"]
        run_db([*new_ctl, "-o", f"-c listen_addresses='' -c unix_socket_directories="
                f"'{c.socket_dir}' -c port={c.port}", "start"])
        try:
            got = run_db([new_bin + psql[0].removeprefix(old_bin), *psql[1:],
                          "SELECT attname, attoptions, (SELECT sum(a + b) FROM t), "
                          "current_setting('work_mem') "
                          "FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 "
                          "ORDER BY attnum"]).stdout.split()
        finally:
            run_db([*new_ctl, "-m", "fast", "stop"])
        assert got == ["a|{n_distinct=100}|110|7MB", "b||110|7MB"]
        kept = Path(f"{data}.pg{V.pg_previous_major}")
        assert kept.is_dir()
        r = _script("--data", data, "--delete-old")
        assert r.returncode == 0 and not kept.exists(), r.stderr


def test_a_pg_upgrade_killed_mid_link_gives_the_old_cluster_back():
    """pg_upgrade --link renames the old global/pg_control before it links the files and writes
    its deletion script after: a run killed in between leaves an old cluster that cannot start
    (its files made here: the crash point after pg_upgrade, then its deletion script removed). The
    next run renames pg_control back; the old cluster starts with its data, and a run after
    that completes the upgrade."""
    with old_cluster() as (c, data, old_bin, new_bin):
        args = ("--data", data, "--old-bindir", old_bin, "--new-bindir", new_bin)

        def on(bindir: str, sql: str | None = None) -> str:
            ctl = [bindir + "/pg_ctl", "-D", data, "-l", str(c.log), "-w"]
            run_db([*ctl, "-o", f"-c listen_addresses='' -c unix_socket_directories="
                    f"'{c.socket_dir}' -c port={c.port}", "start"])
            try:
                return run_db([bindir + "/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h",
                               str(c.socket_dir), "-p", str(c.port), "-d", "postgres", "-c",
                               sql or "SELECT sum(i) FROM t"]).stdout.strip()
            finally:
                run_db([*ctl, "-m", "fast", "stop"])

        on(old_bin, "CREATE TABLE t AS SELECT i FROM generate_series(1, 1000) i")
        r = run_db(["bash", upgrade.db_user_script(), *args], check=False, timeout=600,
                   env={**os.environ, "TICKSTACK_CRASH_AT": "upgrade-linked"})
        assert r.returncode == -9, (r.stdout, r.stderr)
        assert (c.data / "global" / "pg_control.old").exists()
        assert not (c.data / "global" / "pg_control").exists()  # the old cannot start now
        (Path(data + ".upgrade-work") / "delete_old_cluster.sh").unlink()
        # The next run puts the old cluster back first (stopped here once it has).
        r = run_db(["bash", upgrade.db_user_script(), *args], check=False, timeout=600,
                   env={**os.environ, "TICKSTACK_CRASH_AT": "upgrade-running:SIGTERM"})
        assert r.returncode == 130, (r.stdout, r.stderr)
        assert f"restored {data}/global/pg_control" in r.stdout
        assert (c.data / "PG_VERSION").read_text().strip() == V.pg_previous_major
        assert on(old_bin) == "500500"
        r = _script(*args)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert on(new_bin) == "500500"
