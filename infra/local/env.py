"""The local environment: primary + replica PostgreSQL, moto S3 behind stunnel, pgBackRest.

State lives under one directory (`.tickstack/` at the repository root by default):

    ports.json        ports chosen at first start and kept (two checkouts never collide)
    secrets.json      generated passwords (0600); never printed, DSNs point at pgpass
    pgpass            libpq password file for the DSNs `env` prints
    primary/ replica/ cluster data, logs; <cluster>/conf/ its configuration (postgresql.conf,
                      tickstack.conf, pg_hba.conf), outside the data directory and its backups
    s3/               moto log, pid, snapshot of all buckets (moto keeps objects in memory)
    stunnel/          TLS terminator config, cert, log
    tls/              the local CA, the servers' and the backup client's certificates
    pgbackrest/       rendered pgbackrest.conf (the database host's: archive-push, restore and
                      the TLS server) and pgbackrest-client.conf (backups through that server,
                      as the cloud's backup workers take them), log/lock/spool dirs

The servers are bootstrapped as the cloud's are, by the same steps: the primary as its image's
entry point does from the StatefulSet's env (the superuser and its password, no database of
ours), the replica as RDS does from the instance's inputs (the master login `tickstack_admin`,
not a superuser, and the database `db_name`). `workers migrate` creates the primary's database,
as in the cloud: there is no local-only CREATE DATABASE.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from infra import configs, worker_settings
from infra.local import bootstrap, upgrade
from infra.local.interrupted import undo_interrupted_restore
from infra.local.pgbackrest import PgBackRestServer
from infra.local.postgres import DATABASE, PG_BIN, Cluster, install_problems
from infra.local.procs import (
    PartError,
    blocking_dir,
    db_user,
    make_db_dir,
    run_db,
)
from infra.local.s3 import MOTO_KEY, MOTO_SECRET, Moto, Stunnel
from infra.local.tls import LocalCa

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE = REPO_ROOT / ".tickstack"
LANDING_BUCKET = "tickstack-landing"
BACKUP_BUCKET = "tickstack-backup"
REGION = "us-east-1"
PARTS = ("s3", "s3-tls", "primary", "pgbackrest", "pgbackrest-server", "replica")


@dataclass
class PartStatus:
    part: str
    port: int | None
    healthy: bool
    detail: str


class LocalEnv:
    def __init__(self, state_dir: Path = DEFAULT_STATE, *, landing_bucket: str = LANDING_BUCKET,
                 backup_bucket: str = BACKUP_BUCKET, tuning: configs.PgTuning | None = None,
                 pg_bin: Path | None = None):
        """`landing_bucket`/`backup_bucket`: the buckets' names (a test that runs a rendered
        stack's workloads gives the stack's). `tuning`: the primary's (a benchmark sized like
        a production server); the renderer's defaults otherwise. `pg_bin`: the servers'
        binaries (default TICKSTACK_PG_BIN, else the version table's major)."""
        self.pg_bin = Path(pg_bin or PG_BIN)
        self.landing_bucket, self.backup_bucket = landing_bucket, backup_bucket
        self.tuning = tuning or configs.PgTuning()
        self.state = Path(state_dir).absolute()
        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o755)  # postgres must traverse it to reach its own dirs
        self.ports = self._load_or_make("ports.json", self._new_ports)
        if "pgbackrest" not in self.ports:  # state from an older version
            from infra.local.procs import free_port

            self.ports["pgbackrest"] = free_port()
            _write_private(self.state / "ports.json", json.dumps(self.ports, indent=1), 0o644)
        self.secrets = self._load_or_make("secrets.json", self._new_secrets, mode=0o600)
        if set(self._new_secrets()) - set(self.secrets):  # state from an older version
            self.secrets = {**self._new_secrets(), **self.secrets}
            _write_private(self.state / "secrets.json", json.dumps(self.secrets, indent=1))
        sock = self._socket_root()
        self.tls = LocalCa(self.state / "tls")
        self.moto = Moto(self.state / "s3", self.ports["s3"])
        self.stunnel = Stunnel(self.state / "stunnel", self.ports["s3_tls"], self.ports["s3"])
        self.primary = Cluster("primary", self.state / "primary", self.ports["primary"],
                               sock / "primary", self.secrets["postgres_password"],
                               ca_file=self.tls.ca, bindir=self.pg_bin)
        self.replica = Cluster("replica", self.state / "replica", self.ports["replica"],
                               sock / "replica", self.secrets["postgres_password"],
                               ca_file=self.tls.ca, bindir=self.pg_bin)
        self.pgbr_dir = self.state / "pgbackrest"
        # pgBackRest's TLS server (the cloud's sidecar in the primary's pod).
        self.pgbr_server = PgBackRestServer(self.pgbr_dir, self.ports["pgbackrest"],
                                            self.pgbackrest_conf_path, self.pgbackrest_env())

    # --- state files -----------------------------------------------------------------------

    def _load_or_make(self, name: str, make, mode: int = 0o644) -> dict:
        p = self.state / name
        if p.exists():
            return json.loads(p.read_text())
        data = make()
        _write_private(p, json.dumps(data, indent=1), mode)
        return data

    @staticmethod
    def _new_ports() -> dict[str, int]:
        from infra.local.procs import free_port

        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(free_port())
        s3, s3_tls, primary, replica, pgbackrest = sorted(ports)
        return {"s3": s3, "s3_tls": s3_tls, "primary": primary, "replica": replica,
                "pgbackrest": pgbackrest}

    @staticmethod
    def _new_secrets() -> dict[str, str]:
        pw = {"postgres_password": secrets.token_urlsafe(24),
              configs.REPLICA_ADMIN: secrets.token_urlsafe(24)}
        pw.update({user: secrets.token_urlsafe(24) for user in configs.WORKER_LOGINS.values()})
        return pw

    def _socket_root(self) -> Path:
        # Unix socket paths are limited to 107 bytes; deep checkouts fall back to /tmp.
        root = self.state / "run"
        if len(str(root)) > 60:
            digest = hashlib.sha1(str(self.state).encode()).hexdigest()[:10]
            root = Path("/tmp") / f"tickstack-{digest}"
        return root

    # --- rendered configuration (the one renderer, infra/configs.py) ------------------------

    @property
    def pgbackrest_conf_path(self) -> Path:
        """The database host's pgbackrest.conf (archive-push, restore, the TLS server)."""
        return self.pgbr_dir / "pgbackrest.conf"

    @property
    def pgbackrest_client_conf_path(self) -> Path:
        """The backup workers' pgbackrest.conf: the database through the TLS server."""
        return self.pgbr_dir / "pgbackrest-client.conf"

    def primary_pg(self) -> configs.PrimaryPg:
        return configs.PrimaryPg(data_dir=str(self.primary.data), port=self.primary.port,
                                 socket_dir=str(self.primary.socket_dir))

    def backup_repo(self) -> configs.BackupRepo:
        return configs.BackupRepo(
            bucket=self.backup_bucket, region=REGION, endpoint="127.0.0.1",
            port=self.ports["s3_tls"],
            uri_style="path", verify_tls=False, key_type="shared",
        )

    def render(self) -> None:
        make_db_dir(self.pgbr_dir, 0o755)
        for sub in ("log", "lock", "spool", "client-log", "client-lock", "client-spool"):
            make_db_dir(self.pgbr_dir / sub, 0o700)
        conf = configs.pgbackrest_conf(
            self.backup_repo(), self.primary_pg(),
            configs.PgBackRestPaths(log=str(self.pgbr_dir / "log"),
                                    lock=str(self.pgbr_dir / "lock"),
                                    spool=str(self.pgbr_dir / "spool")),
            server=configs.PgBackRestServer(address="localhost", tls=self.tls.server(),
                                            port=self.ports["pgbackrest"]),
        )
        self.pgbackrest_conf_path.write_text(conf)
        os.chmod(self.pgbackrest_conf_path, 0o644)
        client = configs.pgbackrest_conf(
            self.backup_repo(), self.primary_pg(),
            configs.PgBackRestPaths(log=str(self.pgbr_dir / "client-log"),
                                    lock=str(self.pgbr_dir / "client-lock"),
                                    spool=str(self.pgbr_dir / "client-spool")),
            # The server's certificate names localhost (and 127.0.0.1): pgBackRest checks it.
            remote=configs.PgBackRestRemote(host="localhost", tls=self.tls.client(),
                                            port=self.ports["pgbackrest"],
                                            # not the machine's /etc/pgbackrest.conf: its
                                            # /tmp/pgbackrest lock is every environment's
                                            config=str(self.pgbackrest_conf_path)),
        )
        self.pgbackrest_client_conf_path.write_text(client)
        os.chmod(self.pgbackrest_client_conf_path, 0o644)
        for cluster, role in ((self.primary, "primary"), (self.replica, "replica")):
            settings = configs.postgres_conf(
                role=role,
                pgbackrest_config=str(self.pgbackrest_conf_path) if role == "primary" else None,
                listen_addresses="127.0.0.1", port=cluster.port,
                socket_dir=str(cluster.socket_dir), tls=self.tls.server(),
                tuning=self.tuning if role == "primary" else configs.PgTuning(),
            )
            # Outside the data directory (conf/): a restored one cannot bring older files back.
            cluster.write_main_conf()
            cluster.write_conf(configs.postgres_conf_text(settings))
            cluster.write_hba(configs.pg_hba(["127.0.0.1/32"]))

    def pgbackrest_env(self) -> dict[str, str]:
        """S3 keys for pgBackRest come from the environment, never from its config file."""
        return {"PGBACKREST_REPO1_S3_KEY": MOTO_KEY, "PGBACKREST_REPO1_S3_KEY_SECRET": MOTO_SECRET}

    def pgbackrest(self, *args: str, timeout: float = 300, client: bool = False):
        conf = self.pgbackrest_client_conf_path if client else self.pgbackrest_conf_path
        return run_db(
            ["pgbackrest", f"--config={conf}", "--stanza=" + configs.STANZA, *args],
            env={**os.environ, **self.pgbackrest_env()}, check=False, timeout=timeout,
        )

    # --- what the cloud does to the servers, by the same steps (bootstrap.py) -----------------

    def bootstrap_replica(self, master_user: str, password: str, db_name: str) -> None:
        """As RDS creates an instance (bootstrap.bootstrap_replica)."""
        bootstrap.bootstrap_replica(self.replica, master_user, password, db_name)

    def update_extensions(self) -> list[str]:
        """Move every database of both clusters to the installed TimescaleDB and pgvector (the
        replica: pgvector only); what was done."""
        return (bootstrap.update_extensions(self.primary, self.pgbackrest_env())
                + bootstrap.update_extensions(self.replica, {}))

    # --- lifecycle -------------------------------------------------------------------------

    def preflight(self) -> None:
        blocked = blocking_dir(self.state / "primary")
        if blocked is not None:
            raise PartError(
                "state",
                f"the postgres user cannot reach {self.state}: {blocked} is not searchable by it "
                f"(PostgreSQL runs as `postgres`). Use a checkout outside private directories, "
                f"or set --state-dir to a directory postgres can reach.",
            )
        missing = install_problems(self.pg_bin)
        if missing:
            raise PartError("install", "the database stack does not match the version table "
                            "(scripts/versions.env): " + "; ".join(missing)
                            + ". Run `make install-system`.")

    def up(self) -> list[str]:
        """Start what is not running; returns what was started (empty: already up)."""
        self.preflight()
        started: list[str] = []
        if self.moto.start():
            started.append("s3")
            n = self.moto.restore()
            if n:
                started.append(f"s3 restored {n} object versions")
        self.moto.ensure_buckets([self.landing_bucket, self.backup_bucket])
        if not self.stunnel.healthy():
            self.stunnel.start()
            started.append("s3-tls")
        self.tls.ensure()
        started += undo_interrupted_restore(self.primary)
        for c in (self.primary, self.replica):
            make_db_dir(c.root, 0o700)
        self.render()
        # A cluster of the previous major (or an upgrade an earlier `up` left unfinished) is
        # upgraded in place before anything starts or initdb could run over it.
        for c in (self.primary, self.replica):
            line = upgrade.upgrade(
                c, env=self.pgbackrest_env(),
                stanza_config=self.pgbackrest_conf_path if c is self.primary else None,
                kept_until="the full backup" if c is self.primary else "it runs")
            started += [line] if line else []
        for c in (self.primary, self.replica):
            c.init()
        for c in (self.primary, self.replica):
            if not c.running():
                c.start(env=self.pgbackrest_env() if c is self.primary else None)
                started.append(c.name)
            elif c.psql("SHOW config_file") != str(c.config_file):
                # Started before its configuration moved out of the data directory: a reload
                # would re-read the old files there. Restart it on the rendered ones.
                c.stop()
                c.start(env=self.pgbackrest_env() if c is self.primary else None)
                started.append(f"{c.name} (restarted on its configuration outside the data "
                               "directory)")
            else:  # a running server gets what was just rendered (TLS, pg_hba.conf)
                c.reload()
        self.bootstrap_replica(configs.REPLICA_ADMIN, self.secrets[configs.REPLICA_ADMIN],
                               DATABASE)
        if not self.pgbr_server.healthy():
            self.pgbr_server.start()
            started.append("pgbackrest-server")
        started += self.update_extensions()
        self.ensure_stanza()
        started += self.delete_upgraded_clusters()
        return started

    def delete_upgraded_clusters(self) -> list[str]:
        """After an in-place upgrade: a full backup of the primary on the new major (the old
        major's backups cannot be restored into it; PITR starts here), then the old clusters
        kept beside the data directories are deleted. The replica has no backups: its old
        cluster goes once the new one runs (`workers replicate` rebuilds it from landing)."""
        done: list[str] = []
        if upgrade.kept(self.primary):
            r = self.pgbackrest("backup", "--type=full", timeout=upgrade.TIMEOUT, client=True)
            if r.returncode != 0:
                raise PartError("pgbackrest", "the full backup after the upgrade failed; the "
                                f"old cluster stays in {upgrade.kept(self.primary)[0]} until "
                                f"one succeeds (rerun `make up`): {r.stdout[-1500:]}{r.stderr}",
                                self.pgbr_dir / "client-log" / f"{configs.STANZA}-backup.log")
            done.append("primary: full backup on the new major")
        for c in (self.primary, self.replica):
            done += [f"{c.name}: old cluster {p} deleted" for p in upgrade.delete_old(c)]
        return done

    def ensure_stanza(self) -> None:
        # stanza-create is idempotent for a matching stanza (checked in DESIGN.md).
        r = self.pgbackrest("stanza-create", timeout=120)
        if r.returncode != 0:
            raise PartError("pgbackrest", f"stanza-create failed: {r.stdout[-2000:]}{r.stderr}",
                            self.pgbr_dir / "log" / f"{configs.STANZA}-stanza-create.log")

    def down(self, save_s3: bool = True) -> list[str]:
        """Stop everything, PostgreSQL first (an archiver with no S3 can hang a stop).

        `save_s3=False` skips the S3 snapshot: for throwaway environments deleted right after.
        """
        stopped: list[str] = []
        if self.pgbr_server.pid():
            self.pgbr_server.stop()
            stopped.append("pgbackrest-server")
        for c in (self.primary, self.replica):
            if c.exists() and c.running():
                c.stop()
                stopped.append(c.name)
        if save_s3 and self.moto.healthy():
            n = self.moto.save()
            stopped.append(f"s3 (saved {n} object versions)")
        if self.stunnel.pid():
            self.stunnel.stop()
            stopped.append("s3-tls")
        if self.moto.pid():
            self.moto.stop()
        return stopped

    def status(self) -> list[PartStatus]:
        out = [
            PartStatus("s3", self.moto.port, self.moto.healthy(),
                       f"moto {self.moto.endpoint}" if self.moto.healthy() else "stopped"),
            PartStatus("s3-tls", self.stunnel.port, self.stunnel.healthy(),
                       "stunnel → s3" if self.stunnel.healthy() else "stopped"),
        ]
        for c in (self.primary, self.replica):
            ok = c.exists() and c.healthy()
            out.append(PartStatus(c.name, c.port, ok, "accepting connections" if ok else
                                  ("stopped" if c.exists() else "not initialised")))
        out.append(self._archiver_status())
        ok = self.pgbr_server.healthy()
        out.append(PartStatus("pgbackrest-server", self.ports["pgbackrest"], ok,
                              "TLS, client certificate" if ok else "stopped"))
        return out

    def _archiver_status(self) -> PartStatus:
        if not (self.primary.exists() and self.primary.healthy()):
            return PartStatus("pgbackrest", None, False, "primary down")
        row = self.primary.psql(
            "SELECT archived_count, failed_count, "
            "coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) "
            "FROM pg_stat_archiver"
        ).split("|")
        archived, failed, failing = int(row[0]), int(row[1]), row[2] == "t"
        # Healthy unless the newest archive attempt failed (old failures that were followed by
        # successes are history, not a problem).
        return PartStatus("pgbackrest", self.stunnel.port, not failing,
                          f"WAL archived {archived}, failed {failed}"
                          + (" — archiving is FAILING" if failing else ""))

    def dsns(self) -> dict[str, str]:
        return {"primary": self.primary.dsn(),
                "replica": self.replica.dsn(user=configs.REPLICA_ADMIN)}

    def write_pgpass(self) -> Path:
        p = self.state / "pgpass"
        users = {"postgres": self.secrets["postgres_password"],
                 configs.REPLICA_ADMIN: self.secrets[configs.REPLICA_ADMIN]}
        users.update({u: self.secrets[u] for u in configs.WORKER_LOGINS.values()})
        lines = [f"127.0.0.1:{c.port}:*:{u}:{_pgpass_escape(pw)}"
                 for c in (self.primary, self.replica) for u, pw in users.items()]
        _write_private(p, "\n".join(lines) + "\n")
        return p

    def env(self, *, database: str = DATABASE, landing_bucket: str | None = None,
            replica: bool = True) -> dict[str, str]:
        """Every TICKSTACK_ setting and AWS variable the workers need, for `eval $(… env)`.

        `database`, `landing_bucket` and `replica=False` point the same settings at another
        database / bucket of this environment (tests and benchmarks use their own)."""
        env = worker_settings.worker_env(worker_settings.WorkerEnv(
            landing_bucket=landing_bucket or self.landing_bucket,
            backup_bucket=self.backup_bucket, aws_region=REGION,
            s3_endpoint_url=self.moto.endpoint, log_format="console",
        ))
        env.update({
            "TICKSTACK_PRIMARY_DSN": self.primary.dsn(database),
            "TICKSTACK_REPLICA_DSN": self.replica.dsn(database, user=configs.REPLICA_ADMIN)
            if replica else "",
            # Backups through pgBackRest's TLS server, as the cloud's backup workers take them;
            # restore runs on the database host, with its own file.
            "TICKSTACK_PGBACKREST_CONFIG": str(self.pgbackrest_client_conf_path),
            "TICKSTACK_PGBACKREST_PG_CONFIG": str(self.pgbackrest_conf_path),
            # The primary's configuration outside its data directory: restore starts with it.
            "TICKSTACK_PG_CONFIG_FILE": str(self.primary.config_file),
            "TICKSTACK_PG_BINDIR": str(self.pg_bin),
            "TICKSTACK_REPORT_DIR": str(self.state / "report"),
            "TICKSTACK_WORKER_LOGINS_FILE": str(self.write_worker_logins()),
            # Passwords stay in a 0600 file that libpq reads; nothing secret is printed.
            "PGPASSFILE": str(self.write_pgpass()),
            "AWS_ACCESS_KEY_ID": MOTO_KEY,
            "AWS_SECRET_ACCESS_KEY": MOTO_SECRET,
        })
        # Every worker connects as its own login on both servers, as in the cloud.
        for group, user in configs.WORKER_LOGINS.items():
            env[configs.dsn_env_key(group)] = self.primary.dsn(database, user=user)
            if replica:
                env[configs.dsn_env_key(group, "replica")] = self.replica.dsn(database,
                                                                              user=user)
        if db_user() is not None:  # we are root: the database's tools run as postgres
            env["TICKSTACK_PGBACKREST_OS_USER"] = db_user().pw_name
        return env

    def worker_logins(self) -> dict[str, tuple[str, str]]:
        """group role -> (login user, password): what `workers migrate` creates."""
        return {g: (u, self.secrets[u]) for g, u in configs.WORKER_LOGINS.items()}

    def write_worker_logins(self) -> Path:
        p = self.state / "worker-logins.json"
        _write_private(p, worker_settings.worker_logins_json(self.secrets))
        return p


def _pgpass_escape(pw: str) -> str:
    return pw.replace("\\", "\\\\").replace(":", "\\:")


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Create with the final mode from the start: secrets are never briefly world-readable."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
