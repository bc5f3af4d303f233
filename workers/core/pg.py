"""What every worker expects of a database connection it is handed."""

from __future__ import annotations

import psycopg


def require_autocommit(conn: psycopg.Connection, who: str = "this worker") -> psycopg.Connection:
    """Workers write in explicit transactions (`with conn.transaction()`); a connection that is
    not in autocommit mode would turn each of them into a savepoint of one long transaction that
    commits only at the end. The caller chooses the mode; a worker never switches it."""
    if not conn.autocommit:
        raise ValueError(f"{who} needs a connection in autocommit mode (each write is its own "
                         "transaction): connect with autocommit=True")
    return conn
