"""The local environment on real servers: extensions, replica, pgBackRest, lifecycle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from infra.local.env import BACKUP_BUCKET, LANDING_BUCKET, LocalEnv
from infra.local.procs import PartError
from infra.local.s3 import s3_client
from tests.conftest import REPO, make_state_dir
from tests.integration.db import connect


def local_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.local", "--state-dir", str(state), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_primary_timescaledb_works(local_env):
    with connect(local_env, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS t_ts")
        c.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        c.execute("CREATE TABLE t_ts (ts timestamptz NOT NULL, v double precision)")
        c.execute("SELECT create_hypertable('t_ts', by_range('ts', INTERVAL '1 day'))")
        c.execute(
            "INSERT INTO t_ts SELECT '2024-01-01'::timestamptz + g * INTERVAL '1 minute', g "
            "FROM generate_series(0, 29) g"
        )
        rows = c.execute(
            "SELECT time_bucket('10 minutes', ts) b, count(*), sum(v) FROM t_ts "
            "GROUP BY b ORDER BY b"
        ).fetchall()
        assert [(r[1], r[2]) for r in rows] == [(10, 45.0), (10, 145.0), (10, 245.0)]
        n_chunks = c.execute("SELECT count(*) FROM show_chunks('t_ts')").fetchone()[0]
        assert n_chunks == 1
        lic = c.execute("SHOW timescaledb.license").fetchone()[0]
        assert lic in ("apache", "timescale")


def test_primary_vector_cosine(local_env):
    with connect(local_env, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute("DROP TABLE IF EXISTS t_vec")
        c.execute("CREATE TABLE t_vec (id int, v vector(3))")
        c.execute("INSERT INTO t_vec VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[1,1,0]')")
        rows = c.execute(
            "SELECT id, round((v <=> '[1,0,0]')::numeric, 4) FROM t_vec ORDER BY v <=> '[1,0,0]'"
        ).fetchall()
        assert [r[0] for r in rows] == [1, 3, 2]
        assert float(rows[1][1]) == pytest.approx(1 - 2 ** -0.5, abs=1e-4)


def test_replica_has_vector_but_not_timescaledb(local_env):
    with connect(local_env, "replica", autocommit=True) as c:
        avail = {r[0] for r in c.execute("SELECT name FROM pg_available_extensions")}
        assert "vector" in avail
        assert "timescaledb" not in c.execute("SHOW shared_preload_libraries").fetchone()[0]
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        d = c.execute("SELECT '[1,2]'::vector <=> '[2,4]'::vector").fetchone()[0]
        assert d == pytest.approx(0.0, abs=1e-9)
        # Without the preload, TimescaleDB cannot be created: the replica is a plain server.
        with pytest.raises(psycopg.Error, match="shared_preload_libraries"):
            c.execute("CREATE EXTENSION timescaledb")


def test_servers_listen_on_loopback_only(local_env):
    with connect(local_env, autocommit=True) as c:
        assert c.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
    with connect(local_env, "replica", autocommit=True) as c:
        assert c.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    for port in local_env.ports.values():
        lines = [ln for ln in out.splitlines() if ln.split()[3].endswith(f":{port}")]
        assert lines, f"nothing listens on {port}"
        for ln in lines:
            assert ln.split()[3].startswith("127.0.0.1:"), ln


def test_buckets_exist_and_are_versioned(local_env):
    c = s3_client(local_env.moto.endpoint)
    for b in (LANDING_BUCKET, BACKUP_BUCKET):
        assert c.get_bucket_versioning(Bucket=b)["Status"] == "Enabled"


def test_pgbackrest_check_archives_wal(local_env):
    with connect(local_env, autocommit=True) as c:
        before = c.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0]
    r = local_env.pgbackrest("check", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    with connect(local_env, autocommit=True) as c:
        after, failed_last = c.execute(
            "SELECT archived_count, coalesce(last_failed_time > last_archived_time, false) "
            "FROM pg_stat_archiver"
        ).fetchone()
    assert after > before
    assert not failed_last
    # The WAL really is in the backup bucket, behind the TLS terminator.
    keys = [o["Key"] for o in s3_client(local_env.moto.endpoint).list_objects_v2(
        Bucket=BACKUP_BUCKET, Prefix="pgbackrest/archive/").get("Contents", [])]
    assert any(k.endswith(".zst") for k in keys), keys


def test_pgbackrest_conf_holds_no_keys(local_env):
    text = local_env.pgbackrest_conf_path.read_text()
    assert "repo1-s3-key=" not in text and "repo1-s3-key-secret" not in text
    assert "repo1-s3-key-type=shared" in text


def test_up_twice_is_idempotent(local_env):
    pids = (local_env.moto.pid(), local_env.stunnel.pid(),
            (local_env.primary.data / "postmaster.pid").read_text().split()[0])
    r = local_cli(local_env.state, "up")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already up" in r.stdout
    assert pids == (local_env.moto.pid(), local_env.stunnel.pid(),
                    (local_env.primary.data / "postmaster.pid").read_text().split()[0])
    s = local_cli(local_env.state, "status")
    assert s.returncode == 0, s.stdout
    for part in ("s3", "s3-tls", "primary", "replica", "pgbackrest", "pgbackrest-server"):
        assert part in s.stdout


def test_env_prints_exports_without_secrets(local_env):
    r = local_cli(local_env.state, "env")
    assert r.returncode == 0, r.stderr
    import shlex

    exports = dict(shlex.split(ln.removeprefix("export "))[0].split("=", 1)
                   for ln in r.stdout.splitlines())
    for k in ("TICKSTACK_PRIMARY_DSN", "TICKSTACK_REPLICA_DSN", "TICKSTACK_S3_ENDPOINT_URL",
              "TICKSTACK_LANDING_BUCKET", "TICKSTACK_BACKUP_BUCKET", "AWS_ACCESS_KEY_ID",
              "PGPASSFILE"):
        assert k in exports
    assert local_env.secrets["postgres_password"] not in r.stdout
    # The printed DSN works through the pgpass file alone, over verified TLS (its database
    # is made by `workers migrate`; the server's maintenance database stands in here).
    env = {**os.environ, "PGPASSFILE": exports["PGPASSFILE"]}
    dsn = exports["TICKSTACK_PRIMARY_DSN"]
    assert "sslmode=verify-full" in dsn and "sslrootcert=" in dsn
    q = subprocess.run(["psql", "-XAt", dsn.replace("/tickstack?", "/postgres?"), "-c",
                        "SELECT 42, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
                       capture_output=True, text=True, env=env)
    assert q.stdout.strip() == "42|t", q.stderr
    # Without TLS the server refuses (hostssl only).
    plain = dsn.split("?")[0].replace("/tickstack", "/postgres") + "?sslmode=disable"
    q = subprocess.run(["psql", "-XAt", plain, "-c", "SELECT 1"], capture_output=True,
                       text=True, env=env)
    assert q.returncode != 0 and "no pg_hba.conf entry" in q.stderr, q.stderr


def test_down_then_up_keeps_data(own_local_env):
    local_env = own_local_env
    s3 = s3_client(local_env.moto.endpoint)
    s3.put_object(Bucket=LANDING_BUCKET, Key="probe/x", Body=b"v1")
    s3.put_object(Bucket=LANDING_BUCKET, Key="probe/x", Body=b"v2")
    s3.put_object(Bucket=LANDING_BUCKET, Key="probe/gone", Body=b"g")
    s3.delete_object(Bucket=LANDING_BUCKET, Key="probe/gone")
    with connect(local_env, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS t_keep (v text)")
        c.execute("INSERT INTO t_keep VALUES ('kept')")

    r = local_cli(local_env.state, "down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert local_cli(local_env.state, "status").returncode == 1
    assert not local_env.primary.healthy() and not local_env.moto.healthy()

    r = local_cli(local_env.state, "up")
    assert r.returncode == 0, r.stdout + r.stderr
    s3 = s3_client(local_env.moto.endpoint)
    assert s3.get_object(Bucket=LANDING_BUCKET, Key="probe/x")["Body"].read() == b"v2"
    versions = s3.list_object_versions(Bucket=LANDING_BUCKET, Prefix="probe/x")["Versions"]
    assert len(versions) == 2
    assert s3.get_bucket_versioning(Bucket=LANDING_BUCKET)["Status"] == "Enabled"
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=LANDING_BUCKET, Prefix="probe/")
              .get("Contents", [])]
    assert listed == ["probe/x"]  # the deleted object stays deleted
    with connect(local_env, autocommit=True) as c:
        assert c.execute("SELECT v FROM t_keep").fetchall() == [("kept",)]
    # pgBackRest still works against the restored bucket.
    chk = local_env.pgbackrest("check", timeout=180)
    assert chk.returncode == 0, chk.stdout + chk.stderr


def test_port_in_use_names_the_part(tmp_path):
    state = make_state_dir()
    try:
        env = LocalEnv(state)
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", env.ports["s3"]))
            blocker.listen()
            with pytest.raises(PartError) as e:
                env.up()
            assert e.value.part == "s3"
            assert str(env.ports["s3"]) in str(e.value)
            r = local_cli(state, "up")
            assert r.returncode == 1
            assert "s3" in r.stderr and "already in use" in r.stderr
            assert "Traceback" not in r.stderr
    finally:
        LocalEnv(state).down()
        import shutil
        shutil.rmtree(state, ignore_errors=True)


def test_unreachable_state_dir_fails_early_naming_the_dir():
    if os.geteuid() != 0:
        pytest.fail("the harness runs as root here (as CI does); this check needs it")
    private = Path(os.path.realpath(make_state_dir()))
    os.chmod(private, 0o700)
    try:
        env = LocalEnv(private / "state")
        with pytest.raises(PartError) as e:
            env.up()
        assert str(private) in str(e.value)
        assert e.value.part == "state"
    finally:
        import shutil
        shutil.rmtree(private, ignore_errors=True)
