"""The one renderer for everything both environments need (DESIGN.md, "No drift").

The Pulumi program puts these texts into ConfigMaps/Secrets; the local environment writes them
to disk. Both call the functions below with their own inputs, so a setting changed here changes
in both places. Pure functions: no I/O, no Pulumi, no environment reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

STANZA = "tickstack"
# pgBackRest's S3 key types: "shared" reads keys from PGBACKREST_REPO1_S3_KEY[_SECRET] in the
# environment (never written into the file); "web-id" is IRSA in the cloud.
S3KeyType = Literal["shared", "web-id", "auto"]


@dataclass(frozen=True)
class BackupRepo:
    """Where pgBackRest keeps backups and archived WAL."""

    bucket: str
    region: str
    endpoint: str = "s3.amazonaws.com"
    port: int | None = None
    uri_style: Literal["host", "path"] = "host"
    verify_tls: bool = True
    key_type: S3KeyType = "web-id"
    path: str = "/pgbackrest"
    retention_full: int = 2
    retention_diff: int = 7
    # Server-side encryption with a KMS key in the cloud; moto has no KMS locally.
    kms_key_id: str | None = None


@dataclass(frozen=True)
class PgBackRestPaths:
    log: str = "/var/log/pgbackrest"
    lock: str = "/tmp/pgbackrest"
    spool: str = "/var/spool/pgbackrest"


@dataclass(frozen=True)
class PrimaryPg:
    """How pgBackRest reaches the primary it backs up (from the database host)."""

    data_dir: str
    port: int = 5432
    socket_dir: str = "/var/run/postgresql"
    user: str = "postgres"


# Block-level incremental backups (repo1-block, which needs bundling) are a release feature from
# this pgBackRest version on (a beta option, behind --beta, in the one before).
BLOCK_INCREMENTAL_SINCE = (2, 46)


def pgbackrest_conf(
    repo: BackupRepo,
    pg: PrimaryPg,
    paths: PgBackRestPaths = PgBackRestPaths(),
    *,
    stanza: str = STANZA,
    process_max: int = 2,
    pgbackrest_version: str | None = None,
) -> str:
    """Render pgbackrest.conf. zst + 2 processes halved full-backup time here (DESIGN.md).

    Bundling packs the many small files of a cluster into few repository objects: a backup to
    S3 is otherwise one request per file, which dominated its time (bench/backup.py). Block
    incremental is added when the pgBackRest version (default: the version table's) has it.
    """
    if pgbackrest_version is None:
        from infra import versions

        pgbackrest_version = versions.load().pgbackrest
    glob = {
        "repo1-type": "s3",
        "repo1-path": repo.path,
        "repo1-s3-bucket": repo.bucket,
        "repo1-s3-region": repo.region,
        "repo1-s3-endpoint": repo.endpoint,
        "repo1-s3-uri-style": repo.uri_style,
        "repo1-s3-key-type": repo.key_type,
        "repo1-storage-verify-tls": "y" if repo.verify_tls else "n",
        "repo1-retention-full": str(repo.retention_full),
        "repo1-retention-diff": str(repo.retention_diff),
        "repo1-bundle": "y",
        "compress-type": "zst",
        "process-max": str(process_max),
        "start-fast": "y",
        "archive-timeout": "60",
        "log-level-console": "info",
        "log-level-file": "detail",
        "log-path": paths.log,
        "lock-path": paths.lock,
        "spool-path": paths.spool,
    }
    if _version_tuple(pgbackrest_version) >= BLOCK_INCREMENTAL_SINCE:
        glob["repo1-block"] = "y"
    if repo.port is not None:
        glob["repo1-storage-port"] = str(repo.port)
    if repo.kms_key_id:
        glob["repo1-s3-kms-key-id"] = repo.kms_key_id
    stanza_opts = {
        "pg1-path": pg.data_dir,
        "pg1-port": str(pg.port),
        "pg1-socket-path": pg.socket_dir,
        "pg1-user": pg.user,
    }
    return _ini({"global": glob, stanza: stanza_opts})


def archive_command(config_path: str, stanza: str = STANZA) -> str:
    return f"pgbackrest --config={config_path} --stanza={stanza} archive-push %p"


def restore_command(config_path: str, stanza: str = STANZA) -> str:
    return f"pgbackrest --config={config_path} --stanza={stanza} archive-get %f \"%p\""


@dataclass(frozen=True)
class PgTuning:
    shared_buffers: str = "256MB"
    max_connections: int = 100
    maintenance_work_mem: str = "256MB"
    extra: dict[str, str] = field(default_factory=dict)


def postgres_conf(
    *,
    role: Literal["primary", "replica"],
    pgbackrest_config: str | None,
    tuning: PgTuning = PgTuning(),
    listen_addresses: str | None = None,
    port: int | None = None,
    socket_dir: str | None = None,
) -> dict[str, str]:
    """PostgreSQL settings for a tickstack server, as name -> value (already SQL-quoted).

    The primary preloads TimescaleDB and archives WAL through pgBackRest; the replica stands in
    for a managed server (no TimescaleDB, no archiving of ours). `listen_addresses`, `port` and
    `socket_dir` are given by the local environment only (Kubernetes sets them in the image).
    """
    s: dict[str, str] = {
        "max_connections": str(tuning.max_connections),
        "shared_buffers": _q(tuning.shared_buffers),
        "maintenance_work_mem": _q(tuning.maintenance_work_mem),
        "password_encryption": _q("scram-sha-256"),
        "log_line_prefix": _q("%m [%p] %q%u@%d "),
        "log_min_duration_statement": _q("2s"),
        "log_lock_waits": "on",
        "wal_level": _q("replica"),
        "max_wal_size": _q("2GB"),
        "checkpoint_timeout": _q("15min"),
    }
    if role == "primary":
        if not pgbackrest_config:
            raise ValueError("the primary archives WAL: pgbackrest_config is required")
        s.update(
            {
                "shared_preload_libraries": _q("timescaledb"),
                "timescaledb.telemetry_level": _q("off"),
                "timescaledb.max_background_workers": "4",
                "max_worker_processes": "16",
                "archive_mode": "on",
                "archive_command": _q(archive_command(pgbackrest_config)),
                # Bounds how stale the newest archived WAL can be when idle (RPO).
                "archive_timeout": _q("60s"),
            }
        )
    if listen_addresses is not None:
        s["listen_addresses"] = _q(listen_addresses)
    if port is not None:
        s["port"] = str(port)
    if socket_dir is not None:
        s["unix_socket_directories"] = _q(socket_dir)
    for k, v in tuning.extra.items():
        s[k] = _q(v)
    return s


def postgres_conf_text(settings: dict[str, str]) -> str:
    lines = ["# Rendered by tickstack (infra/configs.py). Do not edit: re-render."]
    lines += [f"{k} = {v}" for k, v in sorted(settings.items())]
    return "\n".join(lines) + "\n"


# --- worker settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerEnv:
    landing_bucket: str
    backup_bucket: str
    aws_region: str
    s3_endpoint_url: str | None = None
    log_format: Literal["json", "console"] = "json"


def worker_env(w: WorkerEnv) -> dict[str, str]:
    """Non-secret TICKSTACK_* settings every worker gets (DSNs are secrets, handed separately)."""
    env = {
        "TICKSTACK_LANDING_BUCKET": w.landing_bucket,
        "TICKSTACK_BACKUP_BUCKET": w.backup_bucket,
        "TICKSTACK_AWS_REGION": w.aws_region,
        "TICKSTACK_LOG_FORMAT": w.log_format,
        "AWS_DEFAULT_REGION": w.aws_region,
    }
    if w.s3_endpoint_url:
        env["TICKSTACK_S3_ENDPOINT_URL"] = w.s3_endpoint_url
    return env


# --- helpers ---------------------------------------------------------------------------------


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def _q(value: str) -> str:
    """Quote a postgresql.conf string value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _ini(sections: dict[str, dict[str, str]]) -> str:
    out = ["# Rendered by tickstack (infra/configs.py). Do not edit: re-render."]
    for name, opts in sections.items():
        out.append(f"\n[{name}]")
        for k, v in opts.items():
            if "\n" in v:
                raise ValueError(f"newline in pgbackrest option {k}")
            out.append(f"{k}={v}")
    return "\n".join(out) + "\n"


# --- database logins (both environments; `workers migrate` creates them) ----------------------

# Least-privilege logins per worker: group role (sql/002_roles.sql) -> login user.
WORKER_LOGINS: dict[str, str] = {
    "tickstack_ingest": "ingest_worker",
    "tickstack_embed": "embed_worker",
    "tickstack_retention": "retention_worker",
    "tickstack_reader": "reader",
}


def dsn_env_key(group: str) -> str:
    """The worker setting that carries a group's login DSN: tickstack_ingest -> ..._INGEST_DSN."""
    return "TICKSTACK_" + group.removeprefix("tickstack_").upper() + "_DSN"


def postgres_dsn(*, user: str, password: str, host: str, port: int = 5432,
                 database: str = "tickstack", sslmode: str = "prefer") -> str:
    """A libpq URI; user and password are percent-encoded."""
    from urllib.parse import quote

    return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
            f"{quote(database, safe='')}?sslmode={sslmode}")


def worker_logins_json(passwords: dict[str, str]) -> str:
    """What TICKSTACK_WORKER_LOGINS_FILE holds: {group: {user, password}} (login user -> pw)."""
    import json

    return json.dumps({g: {"user": u, "password": passwords[u]}
                       for g, u in WORKER_LOGINS.items()}, indent=1, sort_keys=True)
