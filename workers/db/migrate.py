"""`workers migrate`: apply sql/NNN_*.sql in order, each once, checksummed, under a lock.

Why not a library: none combines content checksums, a session advisory lock and psycopg 3.

* Each file runs in its own transaction and is recorded in ops.schema_migrations with its
  SHA-256, duration and the server capabilities seen (TimescaleDB or not, licence, pgvector).
* A header line `-- tickstack: no-transaction` runs a single-statement file outside a
  transaction (CREATE INDEX CONCURRENTLY); `-- tickstack: as-admin` runs it as the connecting
  admin (extensions, roles). Every other file runs as `tickstack_migrator`, which owns the objects.
* A session-level advisory lock on a dedicated connection serialises runners: the second waits,
  then finds nothing to do. `lock_timeout` makes a blocked DDL fail clearly instead of hanging.
* An applied file that changed or disappeared stops the run before anything is applied.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from workers.core import logs
from workers.core.errors import BadInput, Failed
from workers.core.sqlfiles import migrations_dir, query, template

SQL_DIR = migrations_dir()
LEDGER_FILE = "_ledger.sql"
FILE_RE = re.compile(r"^\d{3}_[a-z0-9_]+\.sql$")
# pg_advisory_lock key: a fixed 64-bit number derived from the project name.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"tickstack.migrate").digest()[:8], "big", signed=True)
MIGRATOR_ROLE = "tickstack_migrator"
WORKER_ROLES = ("tickstack_ingest", "tickstack_embed", "tickstack_retention", "tickstack_reader",
                "tickstack_replicate", "tickstack_backup")

log = logs.get("migrate")


class MigrationError(Failed):
    """A migration run that cannot proceed; the message names the file."""


@dataclass(frozen=True)
class Migration:
    name: str
    text: str
    sha256: str
    transactional: bool
    as_admin: bool

    @classmethod
    def load(cls, path: Path) -> Migration:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
        directives = set()
        for line in text.splitlines():
            m = re.match(r"^--\s*tickstack:\s*(.+)$", line)
            if not m:
                break
            directives |= {d.strip() for d in m.group(1).split(",")}
        unknown = directives - {"no-transaction", "as-admin"}
        if unknown:
            raise MigrationError(f"{path.name}: unknown directive(s) {sorted(unknown)}")
        return cls(path.name, text, hashlib.sha256(raw).hexdigest(),
                   "no-transaction" not in directives, "as-admin" in directives)


@dataclass
class Result:
    applied: list[str]
    pending: list[str]
    already: list[str]
    capabilities: dict
    server: str = "server"
    status_only: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.applied)

    @property
    def flavour(self) -> str:
        caps = self.capabilities
        return (f"TimescaleDB {caps['timescaledb']} ({caps['timescaledb_license']} licence)"
                if caps["timescaledb"] else "plain PostgreSQL")

    def summary(self) -> str:
        if self.status_only:
            return (f"{self.server}: {len(self.already)} applied, {len(self.pending)} pending "
                    f"— {self.flavour}")
        what = f"applied {len(self.applied)}" if self.applied else "up to date, nothing applied"
        return (f"{self.server}: {what} ({len(self.already) + len(self.applied)} total) — "
                f"{self.flavour}")

    def details(self) -> list[str]:
        if not self.status_only:
            return []
        return [f"  applied  {f}" for f in self.already] + [f"  pending  {f}"
                                                            for f in self.pending]


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    stray = [p.name for p in sql_dir.glob("*.sql")
             if p.name != LEDGER_FILE and not FILE_RE.match(p.name)]
    if stray:
        raise MigrationError(f"{sql_dir}: file(s) not named NNN_name.sql: {', '.join(stray)}")
    files = sorted(p for p in sql_dir.glob("*.sql") if FILE_RE.match(p.name))
    return [Migration.load(p) for p in files]


def capabilities(conn: psycopg.Connection) -> dict:
    row = conn.execute(query(__package__, "capabilities")).fetchone()
    return {"timescaledb": row[0], "timescaledb_license": row[1] if row[0] else None,
            "vector": row[2], "timescaledb_toolkit": row[3],
            "toolkit_available": row[4], "server_version": row[5]}


def _error_where(m: Migration, e: psycopg.Error) -> str:
    pos = e.diag.statement_position
    where = ""
    if pos:
        line = m.text[: int(pos)].count("\n") + 1
        where = f" at line {line} (character {pos})"
    elif e.diag.context:
        where = f" ({e.diag.context.splitlines()[-1]})"
    return f"{m.name}{where}: {e.diag.message_primary or e}"


def load_logins(path: str | None) -> dict[str, tuple[str, str]] | None:
    """The worker logins file (group role -> {user, password}), or None when not configured."""
    if not path:
        return None
    try:
        with open(path) as f:
            raw = json.load(f)
        return {group: (v["user"], v["password"]) for group, v in raw.items()}
    except OSError as e:
        raise BadInput(f"TICKSTACK_WORKER_LOGINS_FILE {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadInput(f"TICKSTACK_WORKER_LOGINS_FILE {path} is not a "
                       f'{{group: {{"user", "password"}}}} JSON object ({e})') from None


def ensure_database(dsn: str, **kw) -> bool:
    """Create the database the DSN names when the server does not have it; True if created.

    Bootstrap is the migrator's, on every server alike (the primary's image creates no
    database of ours, RDS only its `db_name`, the local clusters none): the admin connects to
    the server's maintenance database `postgres` and runs CREATE DATABASE. A concurrent
    runner creating it first is fine.
    """
    from psycopg import conninfo

    try:
        psycopg.connect(dsn, connect_timeout=30, **kw).close()
        return False
    except psycopg.OperationalError as e:
        if "does not exist" not in str(e) or "database" not in str(e):
            raise
    name = conninfo.conninfo_to_dict(dsn).get("dbname")
    if not name:
        raise MigrationError("the DSN names no database")
    with psycopg.connect(conninfo.make_conninfo(dsn, dbname="postgres"), autocommit=True,
                         connect_timeout=30, **kw) as c:
        try:
            c.execute(template(__package__, "create_database").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
    log.info("created database", database=name)
    return True


def run(dsn: str, *, password: str | None = None, sql_dir: Path = SQL_DIR,
        status_only: bool = False, lock_timeout: str = "10s",
        logins: dict[str, tuple[str, str]] | None = None, server: str = "server") -> Result:
    """Apply pending migrations to one server. `logins`: group role -> (user, password).

    The database is created first when missing (not with `status_only`)."""
    files = discover(sql_dir)
    kw = {"password": password} if password else {}
    if not status_only:
        ensure_database(dsn, **kw)
    with psycopg.connect(dsn, autocommit=True, **kw) as lock_conn, \
            psycopg.connect(dsn, **kw) as conn:
        lock_conn.execute(query(__package__, "migrate_lock"), [LOCK_KEY])
        conn.execute(query(__package__, "createrole_self_grant"))
        conn.commit()
        try:
            with conn.transaction():
                conn.execute((sql_dir / LEDGER_FILE).read_text())
            applied = dict(conn.execute(query(__package__, "applied_migrations")).fetchall())
            conn.commit()
            _verify(files, applied)
            pending = [m for m in files if m.name not in applied]
            already = [m.name for m in files if m.name in applied]
            if status_only:
                return Result([], [m.name for m in pending], already, capabilities(conn), server,
                              status_only=True)
            done = []
            for m in pending:
                _apply(conn, m, lock_timeout)
                done.append(m.name)
            caps = capabilities(conn)
            if logins:
                _ensure_logins(conn, logins, lock_timeout)
            conn.commit()
            if caps["timescaledb"] and not caps["timescaledb_toolkit"]:
                log.info("timescaledb_toolkit is not available on this server; "
                         "carrying on without it", available=caps["toolkit_available"])
            return Result(done, [], already, caps, server)
        finally:
            lock_conn.execute(query(__package__, "migrate_unlock"), [LOCK_KEY])


def _verify(files: list[Migration], applied: dict[str, str]) -> None:
    by_name = {m.name: m for m in files}
    problems = []
    for name, sha in applied.items():
        m = by_name.get(name)
        if m is None:
            problems.append(f"{name}: applied (sha256 {sha}) but the file is gone")
        elif m.sha256 != sha:
            problems.append(f"{name}: changed after it was applied "
                            f"(ledger sha256 {sha}, file sha256 {m.sha256})")
    if problems:
        raise MigrationError("refusing to migrate, applied migrations were altered:\n  "
                             + "\n  ".join(problems)
                             + "\nadd a new migration instead of editing an applied one")


def _apply(conn: psycopg.Connection, m: Migration, lock_timeout: str) -> None:
    t0 = time.monotonic()
    log.info("applying", file=m.name, transactional=m.transactional, as_admin=m.as_admin)
    try:
        if m.transactional:
            with conn.transaction():
                conn.execute(template(__package__, "set_local_lock_timeout").format(
                    sql.Literal(lock_timeout)))
                if not m.as_admin:
                    conn.execute(template(__package__, "set_local_role").format(
                        sql.Identifier(MIGRATOR_ROLE)))
                conn.execute(m.text.encode())
                conn.execute(query(__package__, "reset_role"))
                _record(conn, m, t0)
        else:
            conn.commit()
            conn.autocommit = True
            try:
                conn.execute(template(__package__, "set_lock_timeout").format(
                    sql.Literal(lock_timeout)))
                if not m.as_admin:
                    conn.execute(template(__package__, "set_role").format(
                        sql.Identifier(MIGRATOR_ROLE)))
                conn.execute(m.text.encode())
            finally:
                conn.execute(query(__package__, "reset_role"))
                conn.execute(query(__package__, "reset_lock_timeout"))
                conn.autocommit = False
            with conn.transaction():
                _record(conn, m, t0)
    except psycopg.Error as e:
        conn.rollback()
        raise MigrationError(f"migration failed, rolled back: {_error_where(m, e)}") from e
    log.info("applied", file=m.name, ms=int((time.monotonic() - t0) * 1000))


def _record(conn: psycopg.Connection, m: Migration, t0: float) -> None:
    conn.execute(
        query(__package__, "record_migration"),
        [m.name, m.sha256, int((time.monotonic() - t0) * 1000), json.dumps(capabilities(conn))],
    )


def _ensure_logins(conn: psycopg.Connection, logins: dict[str, tuple[str, str]],
                   lock_timeout: str = "10s") -> None:
    """Login users for the workers, members of exactly their group role.

    The password travels as a SCRAM-SHA-256 verifier computed here (what psql's \\password
    does), never in clear: a statement that fails (a lock wait past `lock_timeout`) or
    `log_statement = all` writes the statement into the server log, and the verifier is all
    it can show. A blocked ALTER ROLE fails after `lock_timeout` instead of hanging.
    """
    conn.execute(template(__package__, "set_local_lock_timeout").format(
        sql.Literal(lock_timeout)))
    for group, (user, password) in logins.items():
        if group not in WORKER_ROLES:
            raise MigrationError(f"unknown worker role {group!r}")
        verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(),
                                                b"scram-sha-256").decode()
        exists = conn.execute(query(__package__, "role_exists"), [user]).fetchone()
        verb = "ALTER" if exists else "CREATE"
        try:
            conn.execute(template(__package__, f"{verb.lower()}_login").format(
                user=sql.Identifier(user), verifier=sql.Literal(verifier)))
        except psycopg.errors.LockNotAvailable:
            raise MigrationError(f"worker login {user}: {verb} ROLE waited longer than "
                                 f"lock_timeout ({lock_timeout}) for another session holding "
                                 "the role; rolled back, run migrate again") from None
        conn.execute(template(__package__, "grant_group").format(
            group=sql.Identifier(group), user=sql.Identifier(user)))
