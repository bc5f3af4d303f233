"""A local cluster of the previous PostgreSQL major, upgraded in place at `up`.

The procedure is scripts/pg_major_upgrade.sh, the one the cloud's upgrade Job runs: pg_upgrade
(--clone where the filesystem can, else --link), the extensions moved to the table's versions,
and for the primary `pgbackrest stanza-upgrade`. It is re-runnable (its marker beside the data
directory), so an `up` killed mid-upgrade is completed by the next `up`. The old cluster is kept
as `data.pg<old>` until the primary has a full backup on the new major (`LocalEnv.up` takes it
at once: backups of the old major cannot be restored into the new one), then deleted.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from infra import versions
from infra.local.postgres import Cluster, build_of
from infra.local.procs import PartError, run_db

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pg_major_upgrade.sh"
TIMEOUT = 6 * 3600.0  # a bound for a big cluster (--link does not copy the data)
_copies: list[Path] = []


def db_user_script() -> str:
    """The script where the `postgres` OS user, which runs it, can read it: a checkout may sit
    where that user cannot reach (root's home, a 0700 temporary directory: a CI clone). A copy
    in a private directory of its own, made once per process and removed at exit."""
    if not _copies:
        import atexit
        import shutil
        import tempfile

        from infra.local.procs import chown_db

        d = Path(tempfile.mkdtemp(prefix="tickstack-upgrade-script-"))
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        shutil.copyfile(SCRIPT, d / SCRIPT.name)
        chown_db(d / SCRIPT.name, 0o500)
        chown_db(d, 0o500)
        _copies.append(d / SCRIPT.name)
    return str(_copies[0])


def marker(c: Cluster) -> Path:
    """The script's note of an unfinished upgrade (scripts/pg_major_upgrade.sh)."""
    return c.data.with_name(c.data.name + ".upgrade-state")


def kept(c: Cluster) -> list[Path]:
    """Old clusters the upgrade kept beside the data directory (data.pg<old>)."""
    return sorted(p for p in c.data.parent.glob(c.data.name + ".pg[0-9]*") if p.is_dir())


def _major(data: Path) -> str | None:
    p = data / "PG_VERSION"
    return p.read_text().strip() if p.exists() else None


def upgrade(c: Cluster, *, stanza_config: Path | None = None,
            env: dict[str, str] | None = None, kept_until: str = "the full backup") -> str | None:
    """Upgrade `c` in place when it holds the previous major, or finish an upgrade that was
    interrupted; the line that says what was done (None: nothing to do). A cluster of any other
    major than its binaries' is refused (Cluster.start says what to do)."""
    v = versions.load()
    build = build_of(c.bindir)
    old = _major(c.data)
    if not marker(c).exists():
        if old is None or old == build.major:
            return None
        if (old, build.major) != (v.pg_previous_major, v.pg_major):
            raise c.other_major(old)
    old_bin = v.pg_previous_bindir
    if not (old_bin / "postgres").exists():
        raise PartError(c.name, f"{c.data} holds a PostgreSQL {old or v.pg_previous_major} "
                        f"cluster: upgrading it needs the previous build in {old_bin} "
                        "(`make install-system` installs it when the state holds one: "
                        "scripts/install_system.sh --with-previous)")
    if old == v.pg_previous_major:
        # A server of the old major still running (started before the install): stopped with
        # its own binaries, as `down` would have.
        r = run_db([str(old_bin / "pg_ctl"), "-D", str(c.data), "status"], check=False)
        if r.returncode == 0:
            r = run_db([str(old_bin / "pg_ctl"), "-D", str(c.data), "-m", "fast", "-w", "-t",
                        "120", "stop"], check=False, timeout=180)
            if r.returncode != 0:
                raise PartError(c.name, f"the running PostgreSQL {old} server did not stop: "
                                f"{r.stderr.strip()}", c.log)
    cmd = ["bash", db_user_script(), "--data", str(c.data), "--old-bindir", str(old_bin),
           "--new-bindir", str(c.bindir)]
    if stanza_config is not None:
        from infra.configs import STANZA

        cmd += ["--stanza", STANZA, "--pgbackrest-config", str(stanza_config)]
    t0 = time.monotonic()
    r = run_db(cmd, env={**os.environ, **(env or {})}, check=False, timeout=TIMEOUT)
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise PartError(c.name, f"the upgrade of {c.data} to PostgreSQL {build.major} failed "
                        f"(exit {r.returncode}):\n{r.stderr.strip()[-3000:]}\n--- its steps ---\n"
                        f"{r.stdout.strip()[-2000:]}\nThe old cluster is intact or the next "
                        "`make up` completes the upgrade (scripts/pg_major_upgrade.sh).")
    done = re.search(r"upgraded: PostgreSQL (\d+) -> (\d+) in \d+ s \(([^)]*)\)", r.stdout)
    if done is None:  # "already PostgreSQL N": nothing was left to do
        return None
    olds = kept(c)
    return (f"{c.name}: PostgreSQL {done.group(1)} -> {done.group(2)} in {took:.0f} s "
            f"({done.group(3)}); old cluster kept until {kept_until}: "
            f"{', '.join(str(p) for p in olds) or 'none'}")


def delete_old(c: Cluster) -> list[Path]:
    """Delete the old clusters kept beside `c`'s data directory (after the full backup)."""
    olds = kept(c)
    if not olds:
        return []
    r = run_db(["bash", db_user_script(), "--data", str(c.data), "--delete-old"], check=False,
               timeout=3600)
    if r.returncode != 0:
        raise PartError(c.name, f"deleting the old cluster failed: {r.stderr.strip()}")
    return olds
