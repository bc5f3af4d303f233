"""`workers restore`'s pre-flight: everything that can be checked while the primary is untouched
(workers/ops/restore.py, step 1). A check that cannot succeed refuses (exit 2); a tool or an
environment that is not ready fails (exit 1). Whether the archived WAL reaches the target is
workers/ops/restore_reach.py.
"""

from __future__ import annotations

import configparser
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from workers.core import logs
from workers.core.errors import Failed
from workers.core.sqlfiles import query
from workers.ops import restore_reach, wal_archive
from workers.ops.backup import Tool
from workers.ops.restore_reach import RestoreRefused

log = logs.get("restore")

# A forced restore of a running primary archives its WAL up to now first; this long at most.
ARCHIVE_NOW_SECONDS = 60


def pg_target(config_path: str, stanza: str) -> tuple[Path, int, str | None]:
    """Data directory, port and socket directory of the stanza's pg1, from pgbackrest.conf."""
    cp = configparser.ConfigParser(interpolation=None)
    try:
        with open(config_path) as f:
            cp.read_file(f)
    except (OSError, configparser.Error) as e:
        raise RestoreRefused(f"cannot read the pgBackRest configuration {config_path}: "
                             f"{e}") from None
    if not cp.has_section(stanza) or not cp[stanza].get("pg1-path"):
        raise RestoreRefused(f"{config_path} has no [{stanza}] section with pg1-path")
    sec = cp[stanza]
    return Path(sec["pg1-path"]), int(sec.get("pg1-port", "5432")), sec.get("pg1-socket-path")


def config_file_ready(config_file: str | None) -> None:
    """The server's postgresql.conf outside its data directory, which the restored server is
    started with (TICKSTACK_PG_CONFIG_FILE): required, and there."""
    if not config_file:
        raise RestoreRefused("TICKSTACK_PG_CONFIG_FILE is not set: the restored server would "
                             "start with the configuration inside the backup (an older "
                             "pg_hba.conf, TLS off); set it to the primary's postgresql.conf "
                             "outside its data directory")
    if not Path(config_file).is_file():
        raise Failed(f"TICKSTACK_PG_CONFIG_FILE {config_file}: no such file (the primary's "
                     "postgresql.conf outside its data directory)")


def healthy(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as c:
            return not c.execute(query(__package__, "in_recovery")).fetchone()[0]
    except psycopg.Error:
        return False


@dataclass
class Plan:
    """What preflight found: the restore that will run, and what it will reach."""

    data: Path
    backup: str  # the backup set pgBackRest restores (passed as --set)
    backup_stop: datetime
    backup_bytes: int
    primary_running: bool
    last_commit: datetime | None = None  # newest commit the archived WAL replays to
    last_commit_wal: str | None = None

    def detail(self) -> str:
        return (f"backup set {self.backup} (finished {self.backup_stop:%Y-%m-%d %H:%M:%S}); "
                + (f"archived WAL replays to the commit of {self.last_commit.isoformat()} "
                   f"({self.last_commit_wal})" if self.last_commit else
                   "newest archived commit not found (checked after the move)"))


def preflight(tool: Tool, bindir: str, target: datetime, *, force: bool, admin_dsn: str,
              timeline: str = "latest", now: datetime | None = None) -> Plan:
    """Everything that can be checked before the primary is touched; refuses (exit 2) what
    cannot succeed, fails (exit 1) when a tool or the environment is not ready."""
    data, _, _ = pg_target(tool.config, tool.stanza)
    now = now or datetime.now(UTC)
    if target > now:
        raise RestoreRefused(f"the target {target.isoformat()} is in the future (now "
                             f"{now.isoformat(timespec='seconds')}): nothing to restore to yet")
    running = healthy(admin_dsn)
    if running and not force:
        raise RestoreRefused("the primary is running and healthy: refusing to overwrite it "
                             "(pass --force to rebuild it anyway; its data directory is kept "
                             "aside, not deleted)")
    for tool_name in ("pg_ctl", "pg_waldump"):
        if not (Path(bindir) / tool_name).is_file():
            raise Failed(f"{tool_name} not found in {bindir} (TICKSTACK_PG_BINDIR)")
    info = tool.info()  # pgBackRest reads its config and the repository, as its own user
    chosen = backup_before(info, tool.stanza, target)
    plan = Plan(data, chosen["label"], datetime.fromtimestamp(chosen["timestamp"]["stop"], UTC),
                int((chosen.get("info") or {}).get("size") or 0), running)
    disk_holds(data, plan.backup_bytes)
    seg_size = 16 << 20  # PostgreSQL's default, which tickstack never changes (initdb)
    if running:
        with psycopg.connect(admin_dsn, connect_timeout=3, autocommit=True) as conn:
            seg_size = int(conn.execute(query(__package__, "wal_position")).fetchone()[0])
            _archive_up_to_now(conn)
    plan.last_commit, plan.last_commit_wal = restore_reach.check(
        tool, bindir, info, chosen, target, timeline, seg_size)
    return plan


def backup_before(info: dict, stanza: str, target: datetime) -> dict:
    """The backup set to restore: pgBackRest's own rule (restore.c), the newest set whose stop
    time is before the target, in whole seconds. pgBackRest would fall back to the newest set
    when none is; never let it."""
    status = info.get("status") or {}
    backups = info.get("backup") or []
    if not backups:
        raise RestoreRefused(f"the repository holds no backup set of stanza {stanza} "
                             f"({status.get('message')}): nothing to restore from")
    if status.get("code") not in (0, None):
        raise Failed(f"pgBackRest stanza {stanza}: {status.get('message')}")
    epoch = int(target.timestamp())
    chosen = next((b for b in reversed(backups) if b["timestamp"]["stop"] < epoch), None)
    if chosen is None:
        first = backups[0]
        raise RestoreRefused(
            f"no backup set finished before the target {target.isoformat()}: the oldest, "
            f"{first['label']}, finished at "
            f"{datetime.fromtimestamp(first['timestamp']['stop'], UTC).isoformat()}; "
            "choose a later target")
    return chosen


def disk_holds(data: Path, backup_bytes: int) -> None:
    """Room beside the data directory for the restore while the old one is kept."""
    free = shutil.disk_usage(data.parent).free
    need = int(backup_bytes * 1.1) + (256 << 20)
    if free < need:
        raise Failed(f"not enough disk space beside {data}: {free >> 20} MB free, the restore "
                     f"needs about {need >> 20} MB while the old data directory is kept")


def _archive_up_to_now(conn: psycopg.Connection) -> None:
    """A running primary's WAL up to now into the archive: a commit (so that a target up to
    now has a commit after it to stop at) and a WAL switch, then wait until it is archived.
    Without it, what the primary committed since its last switch would be missing from the
    archive (a fast shutdown does not archive the current segment)."""
    conn.execute(query(__package__, "assign_xid"))  # its commit is in the WAL
    wal = conn.execute(query(__package__, "switch_wal")).fetchone()[0]
    deadline = time.monotonic() + ARCHIVE_NOW_SECONDS
    while time.monotonic() < deadline:
        last = conn.execute(query(__package__, "last_archived_wal")).fetchone()[0]
        if last and wal_archive.WAL_NAME.match(last[:24]) and last[:24] >= wal:
            return
        time.sleep(0.5)
    log.warning("the primary's newest WAL did not reach the archive in time; the restore "
                "can only reach what is archived", wal=wal, seconds=ARCHIVE_NOW_SECONDS)
