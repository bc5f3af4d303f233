"""The primary image's entry point (infra/images/primary/entrypoint.sh), run on this machine the
way the image runs it: an empty PGDATA is initialised (checksums, the password, the tickstack
database) and PostgreSQL started with the pod's arguments; a second start keeps the data."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from infra import versions
from infra.local.procs import db_user, free_port, make_db_dir, port_open, stop_pid
from tests.conftest import REPO, make_state_dir

ENTRYPOINT = REPO / "infra" / "images" / "primary" / "entrypoint.sh"
V = versions.load()


def start(pgdata, sock, port: int, password: str | None,
          password_file: str | None = None) -> subprocess.Popen:
    u = db_user()
    env = {"PATH": f"{V.pg_bindir}:/usr/bin:/bin", "PGDATA": str(pgdata), "HOME": str(sock),
           "TMPDIR": str(sock), **({"POSTGRES_PASSWORD": password} if password else {}),
           **({"POSTGRES_PASSWORD_FILE": password_file} if password_file else {})}
    kw = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []} if u else {}
    # The script as the image holds it: a copy the database user can read, run from a directory
    # it can enter (CI's checkout sits in a 0700 temporary directory it cannot traverse).
    here = Path(sock).parent
    script = here / ENTRYPOINT.name
    shutil.copyfile(ENTRYPOINT, script)
    script.chmod(0o755)
    return subprocess.Popen(
        ["sh", str(script), "postgres", "-c", f"port={port}", "-c",
         "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sock}", "-c",
         "shared_preload_libraries=timescaledb"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=here, **kw)


def accepting(port: int) -> bool:
    """The port answers and the server accepts connections (not 'starting up')."""
    return port_open(port) and subprocess.run(
        [str(V.pg_bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
        check=False).returncode == 0


def wait_up(p: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while not accepting(port):
        assert p.poll() is None, p.stdout.read()
        assert time.monotonic() < deadline, "PostgreSQL did not start"
        time.sleep(0.2)


@pytest.fixture
def root():
    r = make_state_dir("tickstack-entrypoint-")
    yield r
    subprocess.run(["rm", "-rf", str(r)], check=False)


def test_entrypoint_initialises_once_then_starts_postgres(root):
    sock = make_db_dir(root / "run", 0o700)
    pgdata = root / "pgdata" / "data"
    make_db_dir(pgdata.parent, 0o700)
    port = free_port()
    p = start(pgdata, sock, port, "s3cret-pw")
    try:
        wait_up(p, port)
        dsn = f"postgresql://postgres@127.0.0.1:{port}/tickstack"
        with psycopg.connect(dsn, password="s3cret-pw", autocommit=True) as c:
            assert c.execute("SHOW data_checksums").fetchone()[0] == "on"
            c.execute("CREATE EXTENSION timescaledb; CREATE EXTENSION vector")
            got = dict(c.execute("SELECT extname, extversion FROM pg_extension").fetchall())
            lic = c.execute("SHOW timescaledb.license").fetchone()[0]
            c.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        assert got["timescaledb"] == V.timescaledb and got["vector"] == V.pgvector
        assert lic == "timescale"
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(dsn, password="wrong").close()
    finally:
        stop_pid(p.pid)
    out = p.stdout.read()
    assert "initialising" in out and "created database tickstack" in out
    assert "s3cret-pw" not in out

    # A second start finds a database: nothing is initialised, nothing lost, no password needed.
    p = start(pgdata, sock, port, None)
    try:
        wait_up(p, port)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/tickstack",
                             password="s3cret-pw") as c:
            assert c.execute("SELECT v FROM kept").fetchone()[0] == 42
    finally:
        stop_pid(p.pid)
    assert "initialising" not in p.stdout.read()


def test_entrypoint_refuses_an_empty_pgdata_without_a_password(root):
    sock = make_db_dir(root / "run", 0o700)
    make_db_dir(root / "pgdata", 0o700)
    p = start(root / "pgdata" / "data", sock, free_port(), None)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1 and "POSTGRES_PASSWORD is not set" in out
    assert not (root / "pgdata" / "data" / "PG_VERSION").exists()
    assert os.path.isdir(root / "pgdata")


def test_entrypoint_takes_the_password_from_a_mounted_file(root):
    """The cloud mounts the superuser's Secret as a file (POSTGRES_PASSWORD_FILE), never an
    environment variable; a named file that is missing refuses to initialise."""
    sock = make_db_dir(root / "run", 0o700)
    pgdata = root / "pgdata" / "data"
    make_db_dir(pgdata.parent, 0o700)
    secret = make_db_dir(root / "secret", 0o750) / "POSTGRES_PASSWORD"
    p = start(pgdata, sock, free_port(), None, str(secret))
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1 and "missing or empty" in out and str(secret) in out
    assert not (pgdata / "PG_VERSION").exists()

    secret.write_text("f1le-pw\n")
    secret.chmod(0o444)
    port = free_port()
    p = start(pgdata, sock, port, None, str(secret))
    try:
        wait_up(p, port)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/tickstack",
                             password="f1le-pw") as c:
            assert c.execute("SELECT 1").fetchone()[0] == 1
    finally:
        stop_pid(p.pid)
    assert "f1le-pw" not in p.stdout.read()


def test_entrypoint_updates_the_extensions_before_any_client_connects(root):
    """A cluster whose catalog holds an older TimescaleDB (the previous release's library is in
    the image, so it starts) is brought to the image's version at the next start, in every
    database that has it, before the server listens on TCP; the outcome is logged, and a second
    start finds everything up to date."""
    sock = make_db_dir(root / "run", 0o700)
    pgdata = root / "pgdata" / "data"
    make_db_dir(pgdata.parent, 0o700)
    port = free_port()
    p = start(pgdata, sock, port, "pw-ext")
    dsn = f"postgresql://postgres@127.0.0.1:{port}"
    try:
        wait_up(p, port)
        with psycopg.connect(f"{dsn}/tickstack", password="pw-ext", autocommit=True) as c:
            c.execute(f"CREATE EXTENSION timescaledb VERSION '{V.timescaledb_previous}'")
            c.execute("CREATE EXTENSION vector")
            c.execute("CREATE TABLE ticks (t timestamptz NOT NULL, v int)")
            c.execute("SELECT create_hypertable('ticks', 't')")
            c.execute("INSERT INTO ticks VALUES ('2024-01-01', 7)")
            c.execute('CREATE DATABASE "Other db"')
        with psycopg.connect(dsn, dbname="Other db", password="pw-ext", autocommit=True) as c:
            c.execute(f"CREATE EXTENSION timescaledb VERSION '{V.timescaledb_previous}'")
    finally:
        stop_pid(p.pid)
    p.stdout.read()

    def versions_in(db: str) -> dict[str, str]:
        with psycopg.connect(dsn, dbname=db, password="pw-ext") as c:
            return dict(c.execute("SELECT extname, extversion FROM pg_extension").fetchall())

    p = start(pgdata, sock, port, None)
    try:
        wait_up(p, port)
        assert versions_in("tickstack") == {"plpgsql": "1.0", "timescaledb": V.timescaledb,
                                            "vector": V.pgvector}
        assert versions_in("Other db")["timescaledb"] == V.timescaledb
        with psycopg.connect(f"{dsn}/tickstack", password="pw-ext") as c:
            assert c.execute("SELECT v FROM ticks").fetchone()[0] == 7
    finally:
        stop_pid(p.pid)
    out = p.stdout.read()
    old, new = V.timescaledb_previous, V.timescaledb
    for line in (f"timescaledb {old} -> {new} in database tickstack",
                 f"timescaledb {old} -> {new} in database Other db",
                 f"vector {V.pgvector}: up to date in database tickstack"):
        assert f"tickstack-postgres: {line}\n" in out, out
    # Updated on the private socket: the server listened on TCP only afterwards.
    assert out.index("in database tickstack") < out.index("listening on IPv4"), out

    p = start(pgdata, sock, port, None)
    try:
        wait_up(p, port)
    finally:
        stop_pid(p.pid)
    out = p.stdout.read()
    assert f"tickstack-postgres: timescaledb {new}: up to date in database tickstack\n" in out
    assert f"tickstack-postgres: timescaledb {new}: up to date in database Other db\n" in out
    assert " -> " not in out, out


def test_entrypoint_refuses_a_cluster_of_another_major(root):
    """The image's PostgreSQL never starts on a data directory of the previous major: it says
    which, and how to upgrade it (the upgrade Job), instead of PostgreSQL's own refusal."""
    sock = make_db_dir(root / "run", 0o700)
    pgdata = root / "pgdata" / "data"
    make_db_dir(pgdata.parent, 0o700)
    u = db_user()
    kw = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []} if u else {}
    subprocess.run([str(V.pg_previous_bindir / "initdb"), "-D", str(pgdata), "-U", "postgres",
                    "--data-checksums"], check=True, capture_output=True, cwd=root, **kw)
    p = start(pgdata, sock, free_port(), None)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 1, out
    assert (f"holds a PostgreSQL {V.pg_previous_major} cluster and this image runs PostgreSQL "
            f"{V.pg_major}: upgrade it first") in out
    assert (pgdata / "PG_VERSION").read_text().strip() == str(V.pg_previous_major)
