"""What every worker expects of a database connection it is handed."""

from __future__ import annotations

import psycopg

from workers.core.sqlfiles import query


def require_autocommit(conn: psycopg.Connection, who: str = "this worker") -> psycopg.Connection:
    """Workers write in explicit transactions (`with conn.transaction()`); a connection that is
    not in autocommit mode would turn each of them into a savepoint of one long transaction that
    commits only at the end. The caller chooses the mode; a worker never switches it."""
    if not conn.autocommit:
        raise ValueError(f"{who} needs a connection in autocommit mode (each write is its own "
                         "transaction): connect with autocommit=True")
    return conn


def sibling(conn: psycopg.Connection, **kw) -> psycopg.Connection:
    """A second connection to the same server as the same login (autocommit)."""
    return psycopg.connect(conn.info.dsn, password=conn.info.password or None,
                           autocommit=True, **kw)


def set_local_utc(conn: psycopg.Connection | psycopg.Cursor) -> None:
    """TimeZone UTC for the rest of the current transaction (timestamps read and written as
    UTC, day boundaries in UTC)."""
    conn.execute(query(__package__, "set_local_utc"))
