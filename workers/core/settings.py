"""The one settings object of the workers (environment variables with the prefix TICKSTACK_).

Read once at the command boundary and passed down; deep code never reads the environment.
`Settings` is flat, one field per variable (each default and description defined there, once);
the workers receive typed groups of it (`settings.ingest`, `.stream`, `.replica`, `.archive`,
`.backup`), and which connection string a worker uses is decided in one place,
`Settings.dsn(login, server)`. Code that needs a default without a Settings (a library call's
default argument) takes it from the field: `default("ingest_max_zip_ratio")`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SecretsSettingsSource, SettingsConfigDict

from workers.core.errors import BadInput

# A directory of files, one per setting, named as its variable (TICKSTACK_PRIMARY_DSN, ...):
# how secrets reach pods in the cloud (a Kubernetes Secret volume), never the environment.
SECRETS_DIR_ENV = "TICKSTACK_SECRETS_DIR"

# The logins workers connect as ("admin": the migrator/owner DSN itself), and the servers.
Login = Literal["admin", "ingest", "embed", "retention", "reader", "replicate", "backup"]
Server = Literal["primary", "replica"]
LOGINS = ("admin", "ingest", "embed", "retention", "reader", "replicate", "backup")
# Logins with their own setting on the replica too; the others use TICKSTACK_REPLICA_DSN there.
REPLICA_LOGINS = ("ingest", "replicate", "retention")


@dataclass(frozen=True)
class IngestSettings:
    """`workers ingest` (and fetch --ingest, up): parse blocks, flushes, what a file may hold."""

    block_bytes: int
    flush_rows: int
    max_bucket_rows: int
    max_zip_ratio: float
    max_file_bytes: int
    future_tolerance_seconds: float


@dataclass(frozen=True)
class StreamSettings:
    """`workers stream`: micro-batches, reconnects, health endpoint."""

    source: str
    batch_rows: int
    batch_seconds: float
    silence_seconds: float
    grace_seconds: float
    backoff_initial_seconds: float
    backoff_max_seconds: float
    max_message_bytes: int
    ready_seconds: float
    future_tolerance_seconds: float
    health_host: str
    health_port: int


@dataclass(frozen=True)
class ReplicaSettings:
    """The best-effort dual-write to the replica, and `replicate --check`'s deadline."""

    timeout_seconds: float
    breaker_failures: int
    breaker_cooldown_seconds: float
    queue: int
    check_seconds: float


@dataclass(frozen=True)
class ArchiveSettings:
    """`workers fetch`: Binance's public archive, the cache, each file's bounds."""

    base_url: str
    cache_dir: str
    parallel: int
    connect_timeout_seconds: float
    read_timeout_seconds: float
    attempts: int
    retry_after_max_seconds: float
    backoff_seconds: float
    max_file_bytes: int
    min_bytes_per_second: float
    deadline_floor_seconds: float
    max_received_ratio: float
    redirect_hosts: str


@dataclass(frozen=True)
class BackupSettings:
    """pgBackRest (`backup`, `restore`) and the archive check."""

    pgbackrest_config: str | None
    pgbackrest_pg_config: str | None
    stanza: str
    pgbackrest_os_user: str | None
    pg_config_file: str | None
    pg_bindir: str
    archive_stall_seconds: int
    archive_check_seconds: int


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TICKSTACK_", extra="ignore")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        """Environment first, then the files of TICKSTACK_SECRETS_DIR (when set: it must be a
        directory, or nothing would be read and every DSN silently default)."""
        secrets_dir = os.environ.get(SECRETS_DIR_ENV, "").strip()
        if not secrets_dir:
            return init_settings, env_settings, dotenv_settings, file_secret_settings
        if not os.path.isdir(secrets_dir):
            raise BadInput(f"{SECRETS_DIR_ENV}={secrets_dir}: not a directory (the mounted "
                           f"secret files)")
        return (init_settings, env_settings, dotenv_settings,
                SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir))

    # DSNs may carry passwords: SecretStr keeps them out of reprs and logs.
    primary_dsn: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/tickstack"),
        description="Primary (TimescaleDB) connection string, as the migrator/owner.",
    )
    replica_dsn: SecretStr = Field(
        SecretStr(""), description="Dual-write replica connection string; empty = no replica."
    )
    # Least-privilege logins the workers use (empty: fall back to the primary DSN).
    ingest_dsn: SecretStr = Field(SecretStr(""), description="The ingest login on the primary "
                                  "(empty: the primary DSN).")
    embed_dsn: SecretStr = Field(SecretStr(""), description="The embed login on the primary "
                                 "(empty: the primary DSN).")
    retention_dsn: SecretStr = Field(SecretStr(""),
                                     description="The retention login on the primary "
                                     "(empty: the primary DSN).")
    reader_dsn: SecretStr = Field(SecretStr(""), description="The read-only login, `similar` "
                                  "(empty: the primary DSN).")
    replicate_dsn: SecretStr = Field(SecretStr(""), description="The replicate login on the "
                                     "primary (empty: the primary DSN).")
    backup_dsn: SecretStr = Field(SecretStr(""), description="The backup login on the primary "
                                  "(pg_monitor, `backup --check`; empty: the primary DSN).")
    # The same logins on the replica (empty: the replica DSN itself): the dual-write and
    # replicate connect there as their own login, as in the cloud.
    replica_ingest_dsn: SecretStr = Field(SecretStr(""), description="The ingest login on the "
                                          "replica, the dual-write (empty: the replica DSN).")
    replica_replicate_dsn: SecretStr = Field(SecretStr(""), description="The replicate login on "
                                             "the replica (empty: the replica DSN).")
    replica_retention_dsn: SecretStr = Field(SecretStr(""),
                                             description="The retention login on the "
                                             "replica (empty: the replica DSN).")
    worker_logins_file: str | None = Field(
        None,
        description="JSON file {group_role: {user, password}} of worker logins that `migrate` "
        "creates (a Kubernetes Secret in the cloud, .tickstack/ locally).",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint (moto locally); unset = AWS's own endpoints."
    )
    aws_region: str = Field("us-east-1", description="AWS region of the buckets.")
    landing_bucket: str = Field("tickstack-landing", description="The landing bucket: one "
                                "Parquet object per 5-minute bucket, the source of truth.")
    backup_bucket: str = Field("tickstack-backup",
                               description="pgBackRest's repository bucket (WAL and backups).")
    pgbackrest_config: str | None = Field(
        None, description="pgbackrest.conf path (rendered by infra/configs.py): backups and "
        "checks, through pgBackRest's TLS server on the database host."
    )
    pgbackrest_pg_config: str | None = Field(
        None, description="The database host's pgbackrest.conf, for `restore` (it runs where "
        "the data directory is); default: TICKSTACK_PGBACKREST_CONFIG.")
    stanza: str = Field("tickstack", description="pgBackRest stanza of the primary.")
    pgbackrest_os_user: str | None = Field(
        None, description="Run pgBackRest and pg_ctl as this OS user when running as root "
        "(they must act as the database's owner; `postgres` locally).")
    pg_config_file: str | None = Field(
        None, description="The primary's postgresql.conf, outside its data directory (rendered "
        "by infra/configs.py): `restore` starts the restored server with it (`-c "
        "config_file=`), never with configuration that came back inside the backup.")
    pg_bindir: str = Field(
        "", description="PostgreSQL server binaries (pg_ctl), for `restore`; empty: from PATH. "
        "The local environment and the worker image set it for the version table's major.")
    archive_stall_seconds: int = Field(
        300, ge=30, description="`backup --check`: a WAL segment waiting longer than this to be "
        "archived means archiving is stalled.")
    archive_check_seconds: int = Field(
        75, ge=10, le=3600, description="`backup --check`: how long pgBackRest's own check (a "
        "WAL switch that must reach the repository) may take; an unreachable repository makes "
        "pgBackRest retry until then, and the check then fails saying so.")
    vector_index_min_rows: int = Field(
        10_000, ge=1, description="Below this many embeddings, no ivfflat index (exact scan).")
    ingest_block_bytes: int = Field(
        512 << 10, ge=64 << 10, le=256 << 20,
        description="CSV bytes parsed at a time (Arrow's parse buffers peak near 20x this).")
    ingest_flush_rows: int = Field(
        32_768, ge=1, le=10_000_000,
        description="Rows landed and committed together (one transaction per flush); up to "
        "four flushes are in the worker's memory at once (measured: 65,536 peaked near 300 MB "
        "RSS on a day of 2024 trades, 32,768 near 260 MB, at the same speed).")
    ingest_max_zip_ratio: float = Field(
        40.0, gt=1, description="A zip whose CSV is this many times larger than the zip is "
        "refused as a likely zip bomb (Binance dumps expand 4-6 times).")
    ingest_max_file_bytes: int = Field(
        64 << 30, ge=1 << 20, description="Largest uncompressed dump accepted (bytes).")
    ingest_max_bucket_rows: int = Field(
        5_000_000, ge=1000, description="Most trades one 5-minute bucket may hold (the "
        "busiest real buckets hold ~100k); beyond, the file fails with the bucket named.")
    future_tolerance_seconds: float = Field(
        300.0, ge=0, le=86_400, description="Clock skew allowed: a trade (file or stream) whose "
        "time is further ahead of this machine's clock is quarantined as `future_time`.")
    # --- live stream (`workers stream`) ------------------------------------------------------
    stream_source: str = Field(
        "stream:binance", description="ingestion.stream_offsets source name of the live stream "
        "(keep it stable: the offset under it is where a restart resumes).")
    stream_batch_rows: int = Field(1000, ge=1, le=1_000_000,
                                   description="A micro-batch commits at this many trades...")
    stream_batch_seconds: float = Field(1.0, gt=0, le=60,
                                        description="...or when its oldest trade is this old.")
    stream_silence_seconds: float = Field(
        30.0, gt=0, description="No message for this long: the connection is dead, reconnect.")
    stream_grace_seconds: float = Field(
        10.0, ge=0, description="A bucket's landing object is compacted from its parts once "
        "trades this far past the bucket's end arrive.")
    stream_backoff_initial_seconds: float = Field(
        0.5, gt=0, description="First wait before reconnecting (doubling, jittered).")
    stream_backoff_max_seconds: float = Field(
        30.0, gt=0, description="Longest wait between reconnects.")
    stream_max_message_bytes: int = Field(
        65_536, ge=1024, description="Larger messages are quarantined unparsed (a trade "
        "message is ~200 bytes); frames above 16 MiB close the connection.")
    stream_ready_seconds: float = Field(
        60.0, gt=0, description="/readyz: connected and a message within this many seconds.")
    health_host: str = Field(
        "127.0.0.1", description="Health/metrics HTTP bind address: loopback by default (the "
        "local environment listens on loopback only); in Kubernetes the pod's own IP "
        "(status.podIP), which the kubelet's probes and Prometheus reach, and nothing else.")
    health_port: int = Field(9108, ge=0, le=65535,
                             description="/healthz, /readyz, /metrics (0: any free port).")
    # --- dual-write replica ---------------------------------------------------------------
    replica_timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="Deadline of one best-effort replica write (connect "
        "included); a write past it is abandoned and the bucket recorded as replica lag.")
    replica_breaker_failures: int = Field(
        3, ge=1, description="Consecutive replica failures that open the circuit breaker.")
    replica_breaker_cooldown_seconds: float = Field(
        30.0, gt=0, description="Open breaker: no replica attempts for this long (half-open "
        "after: one trial write).")
    replica_queue: int = Field(
        8, ge=1, description="Replica writes waiting behind a slow one; beyond, recorded as lag.")
    replicate_check_seconds: float = Field(
        600, gt=0, description="Deadline of `replicate --check`: past it (a server or landing "
        "stopped answering) the check exits 1 instead of hanging the monitor.")
    # --- Binance public archive (`workers fetch`) --------------------------------------------
    archive_base_url: str = Field(
        "https://data.binance.vision", description="Root of Binance's public archive (or a "
        "mirror laid out like it): files are under <root>/data/<market>/<daily|monthly>/….")
    archive_cache_dir: str = Field(
        default_factory=lambda: _user_cache("binance"),
        description="Verified downloads, laid out like the archive (default: "
        "$XDG_CACHE_HOME/tickstack/binance, else ~/.cache/tickstack/binance; kept by "
        "`make clean`).")
    archive_parallel: int = Field(4, ge=1, le=32, description="Downloads at once.")
    archive_connect_timeout_seconds: float = Field(
        10.0, gt=0, description="Connect timeout of one request to the archive.")
    archive_read_timeout_seconds: float = Field(
        30.0, gt=0, description="No byte for this long: the download is stalled (retried, "
        "resuming where it stopped).")
    archive_attempts: int = Field(
        5, ge=1, le=100, description="Attempts per request that receive nothing before a file "
        "fails (attempts that received bytes do not count).")
    archive_retry_after_max_seconds: float = Field(
        120.0, ge=0, description="A 429/5xx whose Retry-After asks for longer fails the file "
        "at once (run again later) instead of waiting.")
    archive_backoff_seconds: float = Field(
        0.5, gt=0, description="First wait between attempts without Retry-After (doubling, "
        "jittered, up to 30 s).")
    archive_max_file_bytes: int = Field(
        16 * 2**30, ge=1, description="The largest file fetched, and how far an answer that "
        "announces no size is read (16 GiB: a monthly BTCUSDT trades file of the busiest months "
        "is a few GB). An answer is never read past the size announced.")
    archive_min_bytes_per_second: float = Field(
        50_000, gt=0, description="A file's overall deadline is the floor plus its size at this "
        "rate (all its requests, attempts and waits): a trickling server fails the file.")
    archive_deadline_floor_seconds: float = Field(
        600, gt=0, description="The least time a file is given (and a file's probe: its "
        "CHECKSUM and HEAD).")
    archive_max_received_ratio: float = Field(
        3.0, ge=1, description="Bytes received for a file in one run, in all its attempts, "
        "beyond this many times its size fail it (a server that ignores Range and cuts).")
    archive_redirect_hosts: str = Field(
        "", description="Comma-separated hosts the archive may redirect to (besides its own); "
        "other redirects across hosts are refused. `fetch --allow-redirect-host` adds to it.")
    crash_at: str = Field(
        "", description="TESTS ONLY: `point:N` kills the process with SIGKILL the Nth time it "
        "reaches a named crash point (see workers/core/crashpoint.py).")
    report_dir: str = Field(
        ".tickstack/report", description="Where `workers up` writes its HTML report and figures.")
    log_format: Literal["json", "console", "auto"] = Field(
        "auto", description="Log lines as JSON, for a console, or `auto`: console on a "
        "terminal, JSON otherwise.")
    log_level: str = Field("info", description="Lowest level logged (debug, info, warning, "
                           "error).")

    # --- connection routing: the one place that decides ------------------------------------

    def dsn(self, login: Login = "admin", server: Server = "primary") -> str:
        """The connection string `login` uses on `server`: its own setting when set
        (TICKSTACK_<LOGIN>_DSN, on the replica TICKSTACK_REPLICA_<LOGIN>_DSN for the logins
        that have one), else the server's admin DSN. BadInput for the replica when none is
        configured."""
        if login not in LOGINS:
            raise ValueError(f"unknown login {login!r} (one of {', '.join(LOGINS)})")
        if server == "replica":
            if not self.has_replica:
                raise BadInput("TICKSTACK_REPLICA_DSN is empty: no replica configured")
            own = (getattr(self, f"replica_{login}_dsn").get_secret_value().strip()
                   if login in REPLICA_LOGINS else "")
            return own or self.replica_dsn.get_secret_value()
        if server != "primary":
            raise ValueError(f"unknown server {server!r} (primary or replica)")
        own = "" if login == "admin" else getattr(self, f"{login}_dsn").get_secret_value().strip()
        return own or self.primary_dsn.get_secret_value()

    @property
    def has_replica(self) -> bool:
        return bool(self.replica_dsn.get_secret_value().strip())

    def servers(self, login: Login = "admin") -> list[tuple[Server, str]]:
        """(server, DSN of `login`) of every server: the primary, then the replica when set
        (migrations run on each as admin, retention as its own login)."""
        return [("primary", self.dsn(login))] + (
            [("replica", self.dsn(login, "replica"))] if self.has_replica else [])

    # --- the groups the workers receive -----------------------------------------------------

    @property
    def ingest(self) -> IngestSettings:
        return IngestSettings(
            block_bytes=self.ingest_block_bytes, flush_rows=self.ingest_flush_rows,
            max_bucket_rows=self.ingest_max_bucket_rows, max_zip_ratio=self.ingest_max_zip_ratio,
            max_file_bytes=self.ingest_max_file_bytes,
            future_tolerance_seconds=self.future_tolerance_seconds)

    @property
    def stream(self) -> StreamSettings:
        return StreamSettings(
            source=self.stream_source, batch_rows=self.stream_batch_rows,
            batch_seconds=self.stream_batch_seconds, silence_seconds=self.stream_silence_seconds,
            grace_seconds=self.stream_grace_seconds,
            backoff_initial_seconds=self.stream_backoff_initial_seconds,
            backoff_max_seconds=self.stream_backoff_max_seconds,
            max_message_bytes=self.stream_max_message_bytes,
            ready_seconds=self.stream_ready_seconds,
            future_tolerance_seconds=self.future_tolerance_seconds,
            health_host=self.health_host, health_port=self.health_port)

    @property
    def replica(self) -> ReplicaSettings:
        return ReplicaSettings(
            timeout_seconds=self.replica_timeout_seconds,
            breaker_failures=self.replica_breaker_failures,
            breaker_cooldown_seconds=self.replica_breaker_cooldown_seconds,
            queue=self.replica_queue, check_seconds=self.replicate_check_seconds)

    @property
    def archive(self) -> ArchiveSettings:
        return ArchiveSettings(**{name: getattr(self, f"archive_{name}")
                                  for name in ArchiveSettings.__dataclass_fields__})

    @property
    def backup(self) -> BackupSettings:
        return BackupSettings(**{name: getattr(self, name)
                                 for name in BackupSettings.__dataclass_fields__})


def default(name: str):
    """The default of the setting `name` (a Settings field): for code that needs one without a
    Settings object (a library function's default argument), so each default is defined once."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def _user_cache(name: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tickstack", name)
