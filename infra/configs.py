"""The one renderer for everything both environments need (DESIGN.md, "No drift").

The Pulumi program puts these texts into ConfigMaps/Secrets; the local environment writes them
to disk. Both call the functions below with their own inputs, so a setting changed here changes
in both places. Pure functions: no I/O, no Pulumi, no environment reads. What each worker is
handed (its settings and login DSNs) is built from the logins named here by
infra/worker_settings.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

STANZA = "tickstack"
DATABASE = "tickstack"
# Who migrates: the primary's superuser, and the replica's admin (the RDS master user; the
# local replica is given the same login with the same powers: infra/local/env.py).
PRIMARY_ADMIN = "postgres"
REPLICA_ADMIN = "tickstack_admin"
# pgBackRest's TLS server in the primary's pod (the local environment runs one too): backups
# are taken through it by the backup workers, which authenticate with a client certificate
# whose CN the server authorises for the stanza (why not pods/exec:
# docs/deploying/backups-in-kubernetes.md).
PGBACKREST_TLS_PORT = 8432
PGBACKREST_CLIENT_CN = "tickstack-pgbackrest-client"
# Workers verify the server's certificate and name (libpq sslmode); nothing weaker is rendered.
SSLMODE = "verify-full"
TLS_MIN_VERSION = "TLSv1.2"
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
class TlsFiles:
    """A certificate, its key and the CA that signed it, as paths on the host that uses them."""

    cert: str
    key: str
    ca: str


@dataclass(frozen=True)
class PgBackRestServer:
    """pgBackRest's TLS server on the database host (`pgbackrest server`)."""

    address: str
    tls: TlsFiles
    port: int = PGBACKREST_TLS_PORT
    client_cn: str = PGBACKREST_CLIENT_CN


@dataclass(frozen=True)
class PgBackRestRemote:
    """How a backup worker (the repository host) reaches that server: host, port, its client
    certificate and the CA that signed the server's."""

    host: str
    tls: TlsFiles
    port: int = PGBACKREST_TLS_PORT
    # The server's own pgbackrest.conf, for the commands it runs for the worker (its lock,
    # log and spool paths); None: pgBackRest's default file, as in the cloud's image.
    config: str | None = None


@dataclass(frozen=True)
class PrimaryPg:
    """How pgBackRest reaches the primary it backs up (from the database host)."""

    data_dir: str
    port: int = 5432
    socket_dir: str = "/var/run/postgresql"
    user: str = "postgres"


# Block-level incremental backups (repo1-block, which needs bundling) are a release feature from
# this pgBackRest version on (a beta option, behind --beta, in the one before). Off by default:
# a block-format backup restores file by file (one ranged read each) where a bundled one reads
# each bundle once — the real day restored in 8.6 s instead of 0.85 s here (bench/backup.py
# prints both), and in production the restore time is the recovery time. Our chunks are
# appended to and then rewritten whole by compression, so blocks would save little on backup.
BLOCK_INCREMENTAL_SINCE = (2, 46)


def pgbackrest_conf(
    repo: BackupRepo,
    pg: PrimaryPg,
    paths: PgBackRestPaths = PgBackRestPaths(),
    *,
    stanza: str = STANZA,
    process_max: int = 2,
    server: PgBackRestServer | None = None,
    remote: PgBackRestRemote | None = None,
    pgbackrest_version: str | None = None,
    block_incremental: bool = False,
) -> str:
    """Render pgbackrest.conf. zst + 2 processes halved full-backup time here (DESIGN.md).

    Two roles, one renderer: the database host's file (`server`: archive-push, restore and the
    TLS server backups go through) and the backup worker's (`remote`: the database is reached
    through that server; `pg` then names the paths on the database host).

    Bundling packs the many small files of a cluster into few repository objects: a backup to
    S3 is otherwise one request per file, which dominated its time (bench/backup.py).
    `block_incremental` adds repo1-block (refused for a pgBackRest version, default the version
    table's, without it); off by default, see BLOCK_INCREMENTAL_SINCE.
    """
    if server and remote:
        raise ValueError("a pgbackrest.conf is either the database host's or a backup worker's")
    if pgbackrest_version is None:
        from infra import versions

        pgbackrest_version = versions.load().pgbackrest
    if block_incremental and _version_tuple(pgbackrest_version) < BLOCK_INCREMENTAL_SINCE:
        raise ValueError(f"block incremental backups need pgBackRest "
                         f"{'.'.join(map(str, BLOCK_INCREMENTAL_SINCE))} or newer, not "
                         f"{pgbackrest_version}")
    glob = _repo_options(repo, paths, process_max, block_incremental)
    if server is not None:
        glob.update(_tls_server_options(server, stanza))
    return _ini({"global": glob, stanza: _stanza_options(pg, remote)})


def _repo_options(repo: BackupRepo, paths: PgBackRestPaths, process_max: int,
                  block_incremental: bool) -> dict[str, str]:
    """pgbackrest.conf's [global]: the repository, compression, logs and paths."""
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
        # Files only get what needs attention: `detail` filled the log volume of a busy
        # primary (archive-push runs once per WAL segment).
        "log-level-file": "warn",
        "log-path": paths.log,
        "lock-path": paths.lock,
        "spool-path": paths.spool,
    }
    if block_incremental:
        glob["repo1-block"] = "y"
    if repo.port is not None:
        glob["repo1-storage-port"] = str(repo.port)
    if repo.kms_key_id:
        glob["repo1-s3-kms-key-id"] = repo.kms_key_id
    return glob


def _tls_server_options(server: PgBackRestServer, stanza: str) -> dict[str, str]:
    """The database host's TLS server, serving the backup workers' certificate only."""
    return {
        "tls-server-address": server.address,
        "tls-server-port": str(server.port),
        "tls-server-cert-file": server.tls.cert,
        "tls-server-key-file": server.tls.key,
        "tls-server-ca-file": server.tls.ca,
        # Only the backup workers' certificate, and only for this stanza.
        "tls-server-auth": f"{server.client_cn}={stanza}",
    }


def _stanza_options(pg: PrimaryPg, remote: PgBackRestRemote | None) -> dict[str, str]:
    """The stanza's section: the database (through the TLS server, from a backup worker)."""
    stanza_opts: dict[str, str] = {}
    if remote is not None:
        stanza_opts.update({
            "pg1-host": remote.host,
            "pg1-host-type": "tls",
            "pg1-host-port": str(remote.port),
            "pg1-host-cert-file": remote.tls.cert,
            "pg1-host-key-file": remote.tls.key,
            "pg1-host-ca-file": remote.tls.ca,
        })
        if remote.config is not None:
            stanza_opts["pg1-host-config"] = remote.config
    stanza_opts.update({
        "pg1-path": pg.data_dir,
        "pg1-port": str(pg.port),
        "pg1-socket-path": pg.socket_dir,
        "pg1-user": pg.user,
    })
    return stanza_opts


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
    tls: TlsFiles | None = None,
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
                # TimescaleDB's SkipScan node fails some plans on this PostgreSQL major ("ScanKey
                # for skip qual not found", timescale/timescaledb#10429: seen here under load in
                # `workers repair`); tickstack's queries do not need it.
                "timescaledb.enable_skipscan": "off",
                "max_worker_processes": "16",
                "archive_mode": "on",
                "archive_command": _q(archive_command(pgbackrest_config)),
                # Bounds how stale the newest archived WAL can be when idle (RPO).
                "archive_timeout": _q("60s"),
            }
        )
    if tls is None:
        raise ValueError("a tickstack server serves TLS: tls (certificate, key, CA) is required")
    s.update({
        "ssl": "on",
        "ssl_cert_file": _q(tls.cert),
        "ssl_key_file": _q(tls.key),
        "ssl_min_protocol_version": _q(TLS_MIN_VERSION),
    })
    if listen_addresses is not None:
        s["listen_addresses"] = _q(listen_addresses)
    if port is not None:
        s["port"] = str(port)
    if socket_dir is not None:
        s["unix_socket_directories"] = _q(socket_dir)
    for k, v in tuning.extra.items():
        s[k] = _q(v)
    return s


def pg_hba(tcp_from: list[str]) -> str:
    """Who may connect how, on both environments: peer on the socket for the postgres OS user
    (pgBackRest, probes), passwords on the socket, and over TCP TLS only (`hostssl`: a client
    without TLS finds no line and is refused) with scram, from the given networks."""
    lines = ["# Rendered by tickstack (infra/configs.py). Do not edit: re-render.",
             "local all postgres peer",
             "local all all scram-sha-256"]
    lines += [f"hostssl all all {cidr} scram-sha-256" for cidr in tcp_from]
    return "\n".join(lines) + "\n"


# The server's configuration lives OUTSIDE its data directory, in a directory of its own
# (CONF_FILE, TICKSTACK_CONF_FILE and HBA_FILE there): PostgreSQL is started with
# `-c config_file=<dir>/postgresql.conf` (postgres_start_options), and that file names the
# pg_hba.conf beside it. A backup holds the data directory only, so a point-in-time restore —
# to before an upgrade, say — cannot bring back an older postgresql.conf or pg_hba.conf (one
# without TLS): the restored server starts with the current files. What ALTER SYSTEM wrote
# (postgresql.auto.conf) does travel with the data; `workers restore` removes the settings
# below from it before the restored server starts (workers/ops/restore_steps.py).
CONF_FILE = "postgresql.conf"
TICKSTACK_CONF_FILE = "tickstack.conf"
HBA_FILE = "pg_hba.conf"
# Settings that decide who may connect and how: never taken from the data directory.
SECURITY_SETTINGS = ("listen_addresses", "port", "unix_socket_directories", "unix_socket_group",
                     "unix_socket_permissions", "hba_file", "ident_file", "ssl",
                     "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file",
                     "ssl_crl_dir", "ssl_min_protocol_version", "ssl_max_protocol_version",
                     "ssl_ciphers", "ssl_ecdh_curve", "ssl_dh_params_file",
                     "ssl_prefer_server_ciphers", "ssl_passphrase_command",
                     "ssl_passphrase_command_supports_reload", "password_encryption",
                     "scram_iterations", "authentication_timeout", "db_user_namespace",
                     "krb_server_keyfile", "krb_caseins_users", "config_file",
                     # A file may include others: from postgresql.auto.conf, a file the backup
                     # restored into the data directory would set all of the above again.
                     "include", "include_if_exists", "include_dir")


def strip_security_settings_sh(auto_conf: str) -> str:
    """A shell command that removes SECURITY_SETTINGS from a restored postgresql.auto.conf
    (`auto_conf`: a shell word, e.g. "$PGDATA/postgresql.auto.conf"), for the cloud's restore
    init container; `workers restore` does the same (workers/ops/server_start.py)."""
    names = "|".join(SECURITY_SETTINGS)
    return (f'if [ -f {auto_conf} ]; then sed -i -E '
            f"'/^[[:space:]]*({names})[[:space:]]*(=|[[:space:]])/Id' {auto_conf}; fi")


def postgres_main_conf(conf_dir: str, *, listen_addresses: str | None = None,
                       socket_dir: str | None = None) -> str:
    """The file PostgreSQL is started with (`config_file`, in `conf_dir`, outside the data
    directory): where to listen (the cloud's; the local environment puts it in the shared
    settings), the pg_hba.conf beside it, then the shared settings (tickstack.conf)."""
    lines = ["# Rendered by tickstack (infra/configs.py). Do not edit: re-render."]
    if listen_addresses is not None:
        lines.append(f"listen_addresses = {_q(listen_addresses)}")
    if socket_dir is not None:
        lines.append(f"unix_socket_directories = {_q(socket_dir)}")
    lines += [f"hba_file = {_q(f'{conf_dir}/{HBA_FILE}')}",
              f"include = {_q(TICKSTACK_CONF_FILE)}"]
    return "\n".join(lines) + "\n"


def postgres_start_options(conf_dir: str) -> list[str]:
    """The server's command-line options: its configuration from `conf_dir`, never from the
    data directory."""
    return ["-c", f"config_file={conf_dir}/{CONF_FILE}"]


def postgres_conf_text(settings: dict[str, str]) -> str:
    lines = ["# Rendered by tickstack (infra/configs.py). Do not edit: re-render."]
    lines += [f"{k} = {v}" for k, v in sorted(settings.items())]
    return "\n".join(lines) + "\n"


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

# Least-privilege logins per worker: group role (sql/002_roles.sql, 014) -> login user. The
# same logins exist on both servers and in both environments (`workers migrate` creates them).
WORKER_LOGINS: dict[str, str] = {
    "tickstack_ingest": "ingest_worker",
    "tickstack_embed": "embed_worker",
    "tickstack_retention": "retention_worker",
    "tickstack_reader": "reader",
    # replicate rebuilds differing buckets on the replica: ingest's rights plus DELETE there.
    "tickstack_replicate": "replicate_worker",
    # backup --check reads the archiver's state (pg_monitor), nothing else.
    "tickstack_backup": "backup_worker",
}
Server = Literal["primary", "replica"]


def dsn_env_key(group: str, server: Server = "primary") -> str:
    """The worker setting that carries a group's login DSN on a server:
    tickstack_ingest -> TICKSTACK_INGEST_DSN (primary), TICKSTACK_REPLICA_INGEST_DSN (replica)."""
    name = group.removeprefix("tickstack_").upper()
    return f"TICKSTACK_{name}_DSN" if server == "primary" else f"TICKSTACK_REPLICA_{name}_DSN"


def admin_env_key(server: Server) -> str:
    """The setting of a server's admin DSN (migrations): TICKSTACK_PRIMARY_DSN / _REPLICA_DSN."""
    return f"TICKSTACK_{server.upper()}_DSN"
