"""Connections to the test clusters as their superuser (password from the env's secrets)."""

from __future__ import annotations

import psycopg


def connect(env, cluster: str = "primary", dbname: str = "tickstack", **kw) -> psycopg.Connection:
    c = env.primary if cluster == "primary" else env.replica
    return psycopg.connect(c.dsn(dbname), password=env.secrets["postgres_password"], **kw)


class FreshDb:
    """A new, empty database on one of the session's clusters (dropped afterwards)."""

    def __init__(self, env, cluster: str = "primary"):
        import uuid

        self.env = env
        self.cluster = env.primary if cluster == "primary" else env.replica
        self.name = "t_" + uuid.uuid4().hex[:12]
        self.password = env.secrets["postgres_password"]
        with psycopg.connect(self.cluster.dsn("postgres"), password=self.password,
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.name}"')

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.name)

    def connect(self, user: str = "postgres", password: str | None = None, **kw):
        """Autocommit, as the workers' own connections are (each write is its own
        transaction)."""
        kw.setdefault("autocommit", True)
        return psycopg.connect(self.cluster.dsn(self.name, user=user),
                               password=password or self.password, **kw)

    def drop(self) -> None:
        with psycopg.connect(self.cluster.dsn("postgres"), password=self.password,
                             autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
