"""The one layer under both faces: Settings turned into what a stage needs.

A connection per login with its session settings applied (autocommit: every worker writes in
explicit transactions), the landing bucket, the best-effort replica writer and the pgBackRest
tool. The CLI and `workers up` build one Context per run and hand its parts to the workers; no
worker below reads settings or opens what it was not given.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from workers.core.errors import BadInput
from workers.core.settings import Login, Server, Settings

if TYPE_CHECKING:
    import psycopg

    from workers.landing.store import Landing


class Context:
    def __init__(self, settings: Settings, command: str = "workers"):
        self.settings = settings
        self.command = command

    def dsn(self, login: Login = "admin", server: Server = "primary") -> str:
        """Settings.dsn: the one place that decides which connection string a login uses."""
        return self.settings.dsn(login, server)

    def connect(self, login: Login = "admin", server: Server = "primary", *,
                dsn: str | None = None, connect_timeout: int = 10) -> psycopg.Connection:
        """A connection as `login`, in autocommit mode, named for the command in
        pg_stat_activity."""
        import psycopg

        return psycopg.connect(dsn or self.dsn(login, server), autocommit=True,
                               connect_timeout=connect_timeout,
                               application_name=f"tickstack-{self.command}")

    @cached_property
    def landing(self) -> Landing:
        from workers.core.s3 import client
        from workers.landing.store import Landing

        return Landing(client(self.settings), self.settings.landing_bucket)

    def replica_writer(self, metrics=None):
        """The best-effort dual-write writer; None without a replica. Close it when done."""
        from workers.replica.writer import ReplicaWriter

        s = self.settings
        if not s.has_replica:
            return None
        r = s.replica
        return ReplicaWriter(self.dsn("ingest", "replica"), self.dsn("ingest"),
                             timeout=r.timeout_seconds, failures_to_open=r.breaker_failures,
                             cooldown=r.breaker_cooldown_seconds, queue_max=r.queue,
                             metrics=metrics)

    def pgbackrest(self, *, on_database_host: bool = False):
        """The pgBackRest tool; `on_database_host`: with the database host's own file (restore
        runs where the data directory is; backups go through its TLS server)."""
        import dataclasses

        from workers.ops.backup import Tool

        b = self.settings.backup
        if not b.pgbackrest_config:
            raise BadInput("TICKSTACK_PGBACKREST_CONFIG is not set (the pgbackrest.conf "
                           "rendered by infra/configs.py; `python -m infra.local env` sets it)")
        tool = Tool(b.pgbackrest_config, b.stanza, b.pgbackrest_os_user)
        if on_database_host and b.pgbackrest_pg_config:
            tool = dataclasses.replace(tool, config=b.pgbackrest_pg_config)
        return tool
