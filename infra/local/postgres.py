"""A local PostgreSQL cluster (the version table's major) run as `postgres`, loopback only.

`TICKSTACK_PG_BIN` runs it on other binaries: the table's previous build (PG_PREVIOUS_MAJOR,
what an in-place upgrade starts from) is the one other build the environment knows; what it
expects of the extensions follows the binaries' major (`build_of`), not the table's first row.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from infra import configs, versions, worker_settings
from infra.local.procs import PartError, chown_db, make_db_dir, port_open, run_db, tail_of

PG_BIN = Path(os.environ.get("TICKSTACK_PG_BIN") or versions.load().pg_bindir)
# What the data directory's own pg_hba.conf says: the postgres OS user on the socket, nothing
# else. The server is started with the rendered configuration outside the data directory
# (configs.postgres_start_options); a start that bypasses it admits no TCP login at all.
DATA_DIR_HBA = ("# tickstack: not used. The server reads conf/pg_hba.conf beside the data "
                "directory (infra/configs.py).\nlocal all postgres peer\n")


@dataclass(frozen=True)
class Build:
    """A PostgreSQL build of the version table: its binaries, major and extension versions."""

    bindir: Path
    major: str
    timescaledb: str
    pgvector: str


def _major_of(bindir: Path) -> str:
    out = subprocess.run([str(bindir / "pg_config"), "--version"], check=True, text=True,
                         capture_output=True).stdout  # "PostgreSQL <major>.<minor> (…)"
    return out.split()[1].split(".")[0]


@cache
def build_of(bindir: Path) -> Build:
    """The table's row for the binaries in `bindir` (their major from pg_config): the current
    build, or the previous one an upgrade starts from; any other major is an error."""
    v = versions.load()
    if not (bindir / "pg_config").exists():
        raise PartError("install", f"no PostgreSQL in {bindir} ({bindir / 'pg_config'} is "
                        f"missing): PostgreSQL {v.pg_major} is not installed")
    major = _major_of(bindir)
    if major == v.pg_major:
        return Build(bindir, major, v.timescaledb, v.pgvector)
    if major == v.pg_previous_major:
        return Build(bindir, major, v.timescaledb_previous, v.pgvector_previous)
    raise PartError("install", f"{bindir} is PostgreSQL {major}: the version table knows "
                    f"{v.pg_major} and the previous build {v.pg_previous_major} only "
                    f"(TICKSTACK_PG_BIN)")


def install_problems(bindir: Path = PG_BIN) -> list[str]:
    """What the PostgreSQL in `bindir` lacks against its row of the version table (empty: all
    there)."""
    pg_config = bindir / "pg_config"
    if not pg_config.exists():
        return [f"PostgreSQL {versions.load().pg_major} is not installed ({pg_config} is "
                "missing)"]
    try:
        b = build_of(bindir)
    except PartError as e:
        return [str(e)]
    out = subprocess.run([str(pg_config), "--sharedir", "--pkglibdir"], check=True, text=True,
                         capture_output=True).stdout.split()
    share, lib = Path(out[0]), Path(out[1])
    problems = []
    for ext, want, libs in (("timescaledb", b.timescaledb,
                             (f"timescaledb-{b.timescaledb}.so",
                              f"timescaledb-tsl-{b.timescaledb}.so")),
                            ("vector", b.pgvector, ("vector.so",))):
        control = share / "extension" / f"{ext}.control"
        have = None
        if control.exists():
            for line in control.read_text().splitlines():
                if line.startswith("default_version"):
                    have = line.split("=", 1)[1].strip().strip("'")
        if have != want:
            problems.append(f"{ext}: installed {have or 'nothing'} for PostgreSQL {b.major}, "
                            f"the version table says {want}")
        problems += [f"{ext}: {lib / f} is missing" for f in libs if not (lib / f).exists()]
    return problems
DATABASE = "tickstack"


@dataclass
class Cluster:
    name: str  # "primary" | "replica"
    root: Path  # .tickstack/<name>
    port: int
    socket_dir: Path
    password: str
    # The CA that signed the server's certificate: DSNs verify it (sslmode=verify-full).
    ca_file: Path | None = None
    # The server's binaries (TICKSTACK_PG_BIN, else the version table's major).
    bindir: Path = field(default=PG_BIN)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def conf_dir(self) -> Path:
        """The server's configuration, outside its data directory (configs.CONF_FILE)."""
        return self.root / "conf"

    @property
    def config_file(self) -> Path:
        return self.conf_dir / configs.CONF_FILE

    def dsn(self, db: str = DATABASE, user: str = "postgres") -> str:
        """TLS, verified as the workers verify it in the cloud; the password is in pgpass."""
        return worker_settings.postgres_dsn(
            user=user, password=None, host="127.0.0.1", port=self.port, database=db,
            sslrootcert=str(self.ca_file) if self.ca_file else None,
            sslmode=configs.SSLMODE if self.ca_file else "require")

    def exists(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb with data checksums, scram over TCP, peer on the socket (for pgBackRest)."""
        make_db_dir(self.root, 0o700)
        make_db_dir(self.socket_dir, 0o700)
        self.write_main_conf()
        if self.exists():
            return
        with tempfile.NamedTemporaryFile("w", dir=self.root, delete=False) as pw:
            pw.write(self.password + "\n")
        chown_db(Path(pw.name), 0o600)
        try:
            r = run_db(
                [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--pwfile", pw.name, "--auth-local=peer", "--auth-host=scram-sha-256",
                 "--data-checksums", "-E", "UTF8", "--locale=C.UTF-8"],
                check=False,
            )
        finally:
            os.unlink(pw.name)
        if r.returncode != 0:
            raise PartError(self.name, f"initdb failed:\n{r.stdout}\n{r.stderr}")
        (self.data / "pg_hba.conf").write_text(DATA_DIR_HBA)
        # Loopback only, TLS only (the rendered pg_hba.conf replaces this at every render).
        self.write_hba(configs.pg_hba(["127.0.0.1/32"]))

    def _write(self, name: str, text: str) -> None:
        make_db_dir(self.conf_dir, 0o700)
        p = self.conf_dir / name
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        chown_db(tmp, 0o600)
        os.replace(tmp, p)

    def write_main_conf(self) -> None:
        """The file the server is started with: pg_hba.conf beside it, then tickstack.conf."""
        self._write(configs.CONF_FILE, configs.postgres_main_conf(str(self.conf_dir)))

    def write_hba(self, text: str) -> None:
        self._write(configs.HBA_FILE, text)

    def write_conf(self, text: str) -> None:
        self._write(configs.TICKSTACK_CONF_FILE, text)

    def start_options(self) -> str:
        """pg_ctl's -o: the configuration outside the data directory."""
        return " ".join(shlex.quote(o) for o in
                        configs.postgres_start_options(str(self.conf_dir)))

    def running(self) -> bool:
        r = run_db([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"], check=False)
        return r.returncode == 0

    def healthy(self) -> bool:
        r = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
        )
        return r.returncode == 0

    def other_major(self, major: str) -> PartError:
        """The refusal of a data directory of another major than the binaries', with what to
        do: the previous major is upgraded in place by `up` (infra/local/upgrade.py)."""
        v, build = versions.load(), build_of(self.bindir)
        if (major, build.major) == (v.pg_previous_major, v.pg_major):
            how = "`python -m infra.local up` (`make up`) upgrades it in place"
        else:
            how = (f"only a PostgreSQL {v.pg_previous_major} cluster is upgraded in place, "
                   f"onto PostgreSQL {v.pg_major}; start afresh (`make clean`) or dump and "
                   "restore it")
        return PartError(self.name, f"{self.data} holds a PostgreSQL {major} cluster, the "
                         f"binaries in {self.bindir} are PostgreSQL {build.major}: {how} "
                         "(docs/upgrading.md)")

    def start(self, env: dict[str, str] | None = None) -> None:
        if self.running():
            return
        major = (self.data / "PG_VERSION").read_text().strip()
        if major != build_of(self.bindir).major:
            raise self.other_major(major)
        if port_open(self.port):
            raise PartError(self.name, f"port {self.port} is already in use by another program")
        self.log.touch()
        chown_db(self.log, 0o600)
        # ALTER SYSTEM's file is the one place inside the data directory that could still
        # override who may connect: those settings go, as the cloud's restore removes them.
        run_db(["sh", "-c", configs.strip_security_settings_sh(
            shlex.quote(str(self.data / "postgresql.auto.conf")))])
        r = run_db(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o",
             self.start_options(), "-w", "-t", "60", "start"],
            env={**os.environ, **(env or {})}, check=False, timeout=90,
        )
        if r.returncode != 0 or not self.healthy():
            raise PartError(self.name, f"PostgreSQL did not start ({r.stderr.strip()})", self.log)

    def reload(self) -> None:
        """Re-read the configuration (TLS files, pg_hba.conf) without a restart."""
        if self.running():
            run_db([str(self.bindir / "pg_ctl"), "-D", str(self.data), "reload"], check=False)

    def stop(self) -> None:
        """Fast stop, bounded; immediate if fast does not finish (an archiver can hang it)."""
        if not self.running():
            return
        pg_ctl = str(self.bindir / "pg_ctl")
        r = run_db([pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"],
                   check=False, timeout=60)
        if r.returncode != 0 and self.running():
            run_db([pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop"],
                   check=False, timeout=60)
        if self.running():
            raise PartError(self.name, "PostgreSQL did not stop", self.log)

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL as the superuser over the socket (peer auth); for set-up only."""
        r = run_db(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h",
             str(self.socket_dir), "-p", str(self.port), "-d", db, "-c", sql],
            check=False,
        )
        if r.returncode != 0:
            raise PartError(self.name, f"SQL failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def log_tail(self) -> str:
        return tail_of(self.log)
