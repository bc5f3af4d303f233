"""The local servers run exactly the version table's versions (scripts/versions.env), and a
cluster made with an older TimescaleDB is updated in place by `infra.local up`."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from infra import versions
from infra.local.env import LocalEnv
from infra.local.procs import run_db
from tests.conftest import make_state_dir
from tests.integration.pipeline import Stack

V = versions.load()


@pytest.fixture(scope="module")
def stack(local_env):
    s = Stack(local_env)  # migrated: the extensions exist
    yield s
    s.close()


def test_primary_reports_the_tables_versions(stack):
    with stack.admin() as c:
        major = c.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()
        ext = dict(c.execute("SELECT extname, extversion FROM pg_extension").fetchall())
        lic = c.execute("SHOW timescaledb.license").fetchone()[0]
        tsl = c.execute("SELECT count(*) FROM pg_proc WHERE proname = 'compress_chunk'").fetchone()
    assert str(major[0]) == V.pg_major
    assert ext["timescaledb"] == V.timescaledb and ext["vector"] == V.pgvector
    assert lic == "timescale" and tsl[0] >= 1  # licensed: the TSL part is there and enabled


def test_replica_reports_the_tables_versions(local_env):
    replica = Stack(local_env, "replica")
    try:
        with replica.admin() as c:
            major = c.execute("SELECT current_setting('server_version_num')::int / 10000")
            ext = dict(c.execute("SELECT extname, extversion FROM pg_extension").fetchall())
            assert str(major.fetchone()[0]) == V.rds_engine_major
        assert ext["vector"] == V.pgvector and "timescaledb" not in ext
    finally:
        replica.close()


def test_pgbackrest_is_the_tables_and_bundles_files(local_env):
    r = run_db(["pgbackrest", "version"])
    assert r.stdout.strip() == f"pgBackRest {V.pgbackrest}"
    conf = local_env.pgbackrest_conf_path.read_text()
    assert "repo1-bundle=y" in conf
    # Block incremental stays off (its restores read file by file: configs.BLOCK_INCREMENTAL_SINCE).
    assert "repo1-block" not in conf


def test_local_environment_refuses_an_install_that_differs_from_the_table(monkeypatch):
    from infra.local import env as env_mod

    monkeypatch.setattr(env_mod, "install_problems",
                        lambda: ["timescaledb: installed 0.0.1, the version table says x"])
    e = LocalEnv(make_state_dir())
    try:
        with pytest.raises(env_mod.PartError, match="make install-system"):
            e.up()
        assert not e.primary.exists()  # failed before anything was created
    finally:
        shutil.rmtree(e.state, ignore_errors=True)


def _older_timescaledb() -> str | None:
    """An older TimescaleDB whose library is still installed (the build before this one)."""
    lib = run_db(["/bin/sh", "-c", f"ls {V.pg_bindir.parent}/lib/"]).stdout
    older = sorted({m for m in re.findall(r"^timescaledb-(\d+\.\d+\.\d+)\.so$", lib, re.M)
                    if m != V.timescaledb}, key=lambda s: tuple(map(int, s.split("."))))
    return older[-1] if older else None


def test_a_cluster_on_an_older_timescaledb_is_updated_in_place(local_env, tmp_path):
    """A database still on an older TimescaleDB (its library kept by the install) starts, keeps
    its data, and `up` moves it to the table's version with ALTER EXTENSION ... UPDATE."""
    old = _older_timescaledb()
    if old is None:  # a fresh machine: no cluster can be on an older version, nothing to update
        pytest.skip("this machine never had an older TimescaleDB build (no older "
                    "timescaledb-<version>.so): no cluster here can need an in-place update")
    p = local_env.primary
    db = "t_upgrade_" + tmp_path.name[-8:].lower().replace("-", "_")
    p.psql(f'CREATE DATABASE "{db}"')
    try:
        p.psql(f"CREATE EXTENSION timescaledb VERSION '{old}'", db=db)
        p.psql("CREATE TABLE t (ts timestamptz NOT NULL, v int); "
               "SELECT create_hypertable('t', 'ts'); "
               "INSERT INTO t SELECT now() - i * interval '1 hour', i "
               "FROM generate_series(1, 100) i", db=db)
        # A fresh session reads the old version's objects through its old library.
        assert p.psql("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                      db=db) == old
        done = local_env.update_timescaledb()
        assert f"timescaledb {old} -> {V.timescaledb} in database {db}" in " ".join(done)
        assert p.psql("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                      db=db) == V.timescaledb
        assert p.psql("SELECT count(*), sum(v) FROM t", db=db) == "100|5050"
        assert local_env.update_timescaledb() == []  # nothing left to do
    finally:
        p.psql(f'DROP DATABASE "{db}" WITH (FORCE)')


def test_status_and_version_table_cli():
    r = subprocess.run(["python3", "-m", "infra.versions"], capture_output=True, text=True,
                       check=True)
    assert "TIMESCALEDB_VERSION" in r.stdout and V.timescaledb in r.stdout


def test_a_cluster_of_another_major_is_refused_with_what_to_do(tmp_path):
    from infra.local.postgres import Cluster
    from infra.local.procs import PartError, free_port, make_db_dir

    root = make_state_dir("tickstack-major-")
    try:
        c = Cluster("old", root / "old", free_port(), root / "run", "x")
        make_db_dir(c.root)
        make_db_dir(c.data)
        (c.data / "PG_VERSION").write_text(f"{int(V.pg_major) - 1}\n")
        with pytest.raises(PartError, match=rf"PostgreSQL {int(V.pg_major) - 1} cluster, the "
                                            rf"version table says {V.pg_major}: upgrade it with "
                                            r"pg_upgrade \(docs/upgrading.md\)"):
            c.start()
    finally:
        shutil.rmtree(root, ignore_errors=True)
