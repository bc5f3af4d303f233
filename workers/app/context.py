"""The one layer under both faces: Settings turned into what a stage needs.

A connection per login with its session settings applied (autocommit: every worker writes in
explicit transactions), the landing bucket, the best-effort replica writer and the pgBackRest
tool. The CLI and `workers up` build one Context per run and hand its parts to the workers; no
worker below reads settings or opens what it was not given.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Literal

from workers.core.errors import BadInput
from workers.core.settings import Settings

if TYPE_CHECKING:
    import psycopg

    from workers.landing.store import Landing

Login = Literal["admin", "ingest", "embed", "retention", "reader", "replicate", "backup"]
Server = Literal["primary", "replica"]


class Context:
    def __init__(self, settings: Settings, command: str = "workers"):
        self.settings = settings
        self.command = command

    def dsn(self, login: Login = "admin", server: Server = "primary") -> str:
        s = self.settings
        if server == "replica":
            if not s.has_replica:
                raise BadInput("TICKSTACK_REPLICA_DSN is empty: no replica configured")
            if login in ("ingest", "replicate", "retention"):
                return s.replica_dsn_for(login)
            return s.replica_dsn.get_secret_value()
        return s.primary_dsn.get_secret_value() if login == "admin" else s.dsn_for(login)

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

        return ReplicaWriter.from_settings(self.settings, metrics)

    def pgbackrest(self, *, on_database_host: bool = False):
        """The pgBackRest tool; `on_database_host`: with the database host's own file (restore
        runs where the data directory is; backups go through its TLS server)."""
        import dataclasses

        from workers.ops.backup import Tool

        s = self.settings
        if not s.pgbackrest_config:
            raise BadInput("TICKSTACK_PGBACKREST_CONFIG is not set (the pgbackrest.conf "
                           "rendered by infra/configs.py; `python -m infra.local env` sets it)")
        tool = Tool.from_settings(s)
        if on_database_host and s.pgbackrest_pg_config:
            tool = dataclasses.replace(tool, config=s.pgbackrest_pg_config)
        return tool
