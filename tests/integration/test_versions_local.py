"""The local servers run exactly the version table's versions (scripts/versions.env), a
cluster made with an older TimescaleDB is updated in place by `infra.local up`, the previous
build (TICKSTACK_PG_BIN) is checked against its own row, and a cluster of a major that is neither
the table's nor the previous one is refused (the previous one is upgraded in place:
test_major_upgrade.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

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
                        lambda *_: ["timescaledb: installed 0.0.1, the version table says x"])
    e = LocalEnv(make_state_dir())
    try:
        with pytest.raises(env_mod.PartError, match="make install-system"):
            e.up()
        assert not e.primary.exists()  # failed before anything was created
    finally:
        shutil.rmtree(e.state, ignore_errors=True)


def test_a_cluster_on_older_extensions_is_updated_in_place(local_env, tmp_path):
    """A database still on the previous TimescaleDB (whose library the install keeps: `make
    test` installs the previous build) starts, keeps its data, and `up`'s start path moves it
    to the installed version with ALTER EXTENSION ... UPDATE; pgvector, already current, is
    left alone. (pgvector ships no install script of older versions: its update from the
    previous build is proven through pg_upgrade, tests/integration/test_major_upgrade.py.)"""
    old = V.timescaledb_previous
    p = local_env.primary
    db = "t_upgrade_" + tmp_path.name[-8:].lower().replace("-", "_")
    p.psql(f'CREATE DATABASE "{db}"')
    try:
        p.psql(f"CREATE EXTENSION timescaledb VERSION '{old}'", db=db)
        p.psql("CREATE EXTENSION vector", db=db)
        p.psql("CREATE TABLE t (ts timestamptz NOT NULL, v int); "
               "SELECT create_hypertable('t', 'ts'); "
               "INSERT INTO t SELECT now() - i * interval '1 hour', i "
               "FROM generate_series(1, 100) i", db=db)
        # A fresh session reads the old version's objects through its old library.
        assert p.psql("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                      db=db) == old
        done = " ".join(local_env.update_extensions())
        assert f"primary: timescaledb {old} -> {V.timescaledb} in database {db}" in done, done
        assert "vector" not in done, done
        assert p.psql("SELECT string_agg(extname || ' ' || extversion, ',' ORDER BY extname) "
                      "FROM pg_extension WHERE extname <> 'plpgsql'",
                      db=db) == f"timescaledb {V.timescaledb},vector {V.pgvector}"
        assert p.psql("SELECT count(*), sum(v) FROM t", db=db) == "100|5050"
        assert local_env.update_extensions() == []  # nothing left to do
    finally:
        p.psql(f'DROP DATABASE "{db}" WITH (FORCE)')


def test_status_and_version_table_cli():
    r = subprocess.run(["python3", "-m", "infra.versions"], capture_output=True, text=True,
                       check=True)
    assert "TIMESCALEDB_VERSION" in r.stdout and V.timescaledb in r.stdout


def test_the_previous_build_is_checked_against_its_own_row():
    """TICKSTACK_PG_BIN=<the previous build>: its extensions are expected at the previous
    versions (not the table's first row), and the workers get its binaries."""
    from infra.local.postgres import build_of, install_problems

    b = build_of(V.pg_previous_bindir)
    assert (b.major, b.timescaledb, b.pgvector) == (V.pg_previous_major,
                                                    V.timescaledb_previous, V.pgvector_previous)
    assert install_problems(V.pg_previous_bindir) == []
    state = make_state_dir()
    try:
        r = subprocess.run([sys.executable, "-m", "infra.local", "--state-dir", str(state), "env"],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "TICKSTACK_PG_BIN": str(V.pg_previous_bindir)})
        assert f"TICKSTACK_PG_BINDIR={V.pg_previous_bindir}\n" in r.stdout
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _fake_cluster(root, major: int):
    from infra.local.postgres import Cluster
    from infra.local.procs import free_port, make_db_dir

    c = Cluster("old", root / "old", free_port(), root / "run", "x")
    make_db_dir(c.root)
    make_db_dir(c.data)
    (c.data / "PG_VERSION").write_text(f"{major}\n")
    return c


@pytest.mark.parametrize("major", [int(V.pg_previous_major) - 1, int(V.pg_major) - 1,
                                   int(V.pg_major) + 1])
def test_a_cluster_of_another_major_is_refused_with_what_to_do(major):
    """Neither the table's major nor the previous one: refused by `start` and by `up`'s
    upgrade step alike, saying which majors are upgraded in place, nothing touched."""
    from infra.local import upgrade
    from infra.local.procs import PartError

    if str(major) == V.pg_previous_major:
        pytest.fail("the parameters must avoid the previous major")
    root = make_state_dir("tickstack-major-")
    try:
        c = _fake_cluster(root, major)
        want = (rf"holds a PostgreSQL {major} cluster, the binaries in \S+ are PostgreSQL "
                rf"{V.pg_major}: only a PostgreSQL {V.pg_previous_major} cluster is upgraded in "
                rf"place, onto PostgreSQL {V.pg_major}; start afresh \(`make clean`\)")
        with pytest.raises(PartError, match=want):
            c.start()
        with pytest.raises(PartError, match=want):
            upgrade.upgrade(c)
        assert sorted(p.name for p in c.root.iterdir()) == ["data"]
        assert (c.data / "PG_VERSION").read_text() == f"{major}\n"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_previous_major_cluster_is_not_started_but_upgraded_by_up():
    """`start` alone never runs the previous major's cluster on the new binaries: it says that
    `up` upgrades it (test_major_upgrade.py proves the upgrade)."""
    from infra.local.procs import PartError

    root = make_state_dir("tickstack-major-")
    try:
        c = _fake_cluster(root, int(V.pg_previous_major))
        with pytest.raises(PartError, match=rf"PostgreSQL {V.pg_previous_major} cluster, the "
                                            rf"binaries in \S+ are PostgreSQL {V.pg_major}: "
                                            r"`python -m infra.local up` \(`make up`\) "
                                            r"upgrades it in place"):
            c.start()
    finally:
        shutil.rmtree(root, ignore_errors=True)
