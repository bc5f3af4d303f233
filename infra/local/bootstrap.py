"""What the cloud does to the servers, done locally by the same steps: the replica
bootstrapped as RDS does from the instance's inputs, and the primary's TimescaleDB moved in
place when the install is newer than a database's extension."""

from __future__ import annotations

from pathlib import Path

from infra.local.postgres import Cluster
from infra.local.procs import PartError


def bootstrap_replica(c: Cluster, master_user: str, password: str, db_name: str) -> None:
    """As RDS creates an instance: a master login that is not a superuser (RDS's
    rds_superuser: CREATEDB, CREATEROLE, the allow-listed extensions), and `db_name`
    owned by it. pgvector is allow-listed on RDS; here only a superuser may create an
    untrusted extension, so it is made available in template1, as RDS makes it
    available to its master user. Idempotent; the password is set every time."""
    from psycopg import sql

    ident = sql.Identifier(master_user).as_string(None)
    lit = sql.Literal(password).as_string(None)
    exists = c.psql("SELECT 1 FROM pg_roles WHERE rolname = "
                    + sql.Literal(master_user).as_string(None))
    verb = "ALTER" if exists == "1" else "CREATE"
    c.psql(f"{verb} ROLE {ident} LOGIN NOSUPERUSER CREATEDB CREATEROLE PASSWORD {lit}")
    # What RDS's rds_superuser holds of the predefined roles: with ADMIN OPTION, which since
    # server_version_num 160000 is what lets a CREATEROLE admin grant them on (migration 015
    # grants pg_monitor to tickstack_backup); CREATEROLE alone no longer does.
    c.psql(f"GRANT pg_monitor, pg_signal_backend TO {ident} WITH ADMIN OPTION")
    c.psql("CREATE EXTENSION IF NOT EXISTS vector", db="template1")
    dbl, dbi = sql.Literal(db_name).as_string(None), sql.Identifier(db_name).as_string(None)
    owner = c.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {dbl}")
    if not owner:
        c.psql(f"CREATE DATABASE {dbi} OWNER {ident}")
    elif owner != master_user:
        # State from before the replica had its own admin: the database and the migration
        # ledger were the superuser's. Hand them to the master, as RDS would have them.
        c.psql(f"ALTER DATABASE {dbi} OWNER TO {ident}")
        c.psql("DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
               f"'tickstack_migrator') THEN GRANT tickstack_migrator TO {ident}; END IF; "
               "END $$", db=db_name)
        c.psql(f"ALTER TABLE IF EXISTS ops.schema_migrations OWNER TO {ident}", db=db_name)


EXTENSIONS = ("timescaledb", "vector")  # what the start path brings to the installed versions


def update_extensions(c: Cluster, start_env: dict[str, str]) -> list[str]:
    """Move every database of cluster `c` to the installed TimescaleDB and pgvector; what was
    done. The primary image's entry point does the same at every start of the cloud's primary
    (infra/images/primary/entrypoint.sh), with the same log lines.

    A new TimescaleDB install keeps the older version's library, so a cluster made with it
    still starts; `ALTER EXTENSION ... UPDATE`, the first command of a fresh session (before
    anything loads the old library), then moves each database to the installed default
    version. A primary started before the install runs the old loader: it is restarted first
    (with `start_env`).
    """
    dbs = c.psql("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                 "ORDER BY 1").splitlines()
    names = ", ".join(f"'{e}'" for e in EXTENSIONS)
    behind = []
    for db in dbs:  # one session per database: what is installed against what could be
        rows = c.psql("SELECT e.extname || ' ' || e.extversion || ' ' || a.default_version "
                      "FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname "
                      f"WHERE e.extname IN ({names}) ORDER BY 1", db=db)
        behind += [(db, ext, old, want) for ext, old, want in
                    (row.split() for row in rows.splitlines()) if old != want]
    if not behind:
        return []
    done: list[str] = []
    loader = Path(c.psql("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'")) \
        / "timescaledb.so"
    started_at = float(c.psql("SELECT extract(epoch FROM pg_postmaster_start_time())"))
    if any(ext == "timescaledb" for _, ext, _, _ in behind) and loader.exists() and \
            loader.stat().st_mtime > started_at:
        c.stop()
        c.start(env=start_env)
        done.append(f"{c.name} restarted (its TimescaleDB loader predated the install)")
    for db, ext, old, want in behind:
        # psql -c: a fresh session whose first command is the update (Cluster.psql).
        c.psql(f"ALTER EXTENSION {ext} UPDATE", db=db)
        new = c.psql(f"SELECT extversion FROM pg_extension WHERE extname = '{ext}'", db=db)
        if new != want:
            raise PartError(c.name, f"database {db}: ALTER EXTENSION {ext} UPDATE left "
                            f"version {new}, not {want}", c.log)
        done.append(f"{c.name}: {ext} {old} -> {new} in database {db}")
    return done
