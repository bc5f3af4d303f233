"""Connections to the test clusters, as the cloud's logins (passwords from the env's secrets).

Each server's admin is the cloud's: the primary's superuser `postgres`, the replica's RDS-like
master login `tickstack_admin` (not a superuser; infra/local/env.py bootstrap_replica).
"""

from __future__ import annotations

import psycopg

from infra import configs

ADMINS = {"primary": configs.PRIMARY_ADMIN, "replica": configs.REPLICA_ADMIN}


def admin_password(env, cluster: str) -> str:
    return env.secrets["postgres_password" if cluster == "primary" else configs.REPLICA_ADMIN]


def connect(env, cluster: str = "primary", dbname: str = "postgres", **kw) -> psycopg.Connection:
    """The server's superuser, to its maintenance database (tests of the server itself)."""
    c = env.primary if cluster == "primary" else env.replica
    return psycopg.connect(c.dsn(dbname), password=env.secrets["postgres_password"], **kw)


class FreshDb:
    """A new, empty database on one of the session's clusters, owned by that server's admin
    as a database it made itself would be (dropped afterwards)."""

    def __init__(self, env, cluster: str = "primary"):
        import uuid

        self.env = env
        self.cluster = env.primary if cluster == "primary" else env.replica
        self.name = "t_" + uuid.uuid4().hex[:12]
        self.admin = ADMINS[cluster]
        self.password = admin_password(env, cluster)
        self._superuser_password = env.secrets["postgres_password"]
        with psycopg.connect(self.cluster.dsn("postgres"), password=self._superuser_password,
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.name}" OWNER "{self.admin}"')

    @property
    def dsn(self) -> str:
        """The admin's DSN: what `workers migrate` connects as on this server in the cloud."""
        return self.cluster.dsn(self.name, user=self.admin)

    def connect(self, user: str | None = None, password: str | None = None, **kw):
        """Autocommit, as the workers' own connections are (each write is its own
        transaction)."""
        kw.setdefault("autocommit", True)
        return psycopg.connect(self.cluster.dsn(self.name, user=user or self.admin),
                               password=password or self.password, **kw)

    def drop(self) -> None:
        with psycopg.connect(self.cluster.dsn("postgres"), password=self._superuser_password,
                             autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
