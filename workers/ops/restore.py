"""`workers restore --target-time T`: the disaster-recovery rebuild of the primary.

  1. check everything that can be checked while the primary is untouched (`preflight`): the
     target is not in the future; a running, healthy primary is not overwritten unless forced;
     pgBackRest reads its configuration and repository; a backup set finished before T; the
     archived WAL from that backup on reaches past T (no hole on the way, a commit after T);
     the disk holds the restore beside the old data. A forced restore of a running primary
     first archives its WAL up to now, so nothing it committed before T is missing;
  2. stop the primary if it runs; move the old data directory aside (never delete it);
  3. pgBackRest restores that backup set and PostgreSQL replays archived WAL up to T, then
     promotes (point-in-time recovery). If any of it fails or is interrupted (SIGINT, SIGTERM),
     the old data directory is put back (and started again when it was running): a failed
     restore leaves the primary as it was. From before step 2 until the promotion a note beside
     the data directory (workers/ops/restore_marker.py) says where the old one is: a restore
     killed outright is undone by the next `python -m infra.local up` or `workers restore`;
  4. verify the extensions and the migration ledger;
  5. close the gap after T from landing: every landing object the restored registry does not
     hold at its current checksum (landed or changed after T) is verified against the checksum
     stored with it and loaded — so no landed tick is lost.

In Kubernetes, steps 2–3 run in the database pod's init container (the Pulumi program's
restore mode) and the restore Job runs this command with --skip-pitr for steps 4–5.
"""

from __future__ import annotations

import configparser
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from workers.core import crashpoint, interrupts, logs
from workers.core.errors import Failed
from workers.core.ticks import to_us
from workers.db.ingest import landing_keys, replay
from workers.db.stream_commit import compact_all
from workers.landing.store import RAW, Landing, bucket_of_key
from workers.ops import restore_marker, restore_reach, server_start, wal_archive
from workers.ops.backup import BackupError, Tool, lock_held, tail
from workers.ops.restore_reach import RestoreRefused

log = logs.get("restore")

# Landing objects modified this long before the target may belong to transactions that
# committed after it (an object is written before its rows commit): replay them too.
LANDING_MARGIN = timedelta(hours=1)
# A forced restore of a running primary archives its WAL up to now first; this long at most.
ARCHIVE_NOW_SECONDS = 60


@dataclass
class Step:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class RestoreReport:
    target: str
    steps: list[Step] = field(default_factory=list)
    newest_tick_before_replay: str | None = None
    newest_tick_after: str | None = None
    replayed_objects: int = 0
    replayed_rows: int = 0
    moved_aside: str | None = None
    current: str = ""  # the step running (named when an interrupt stops it)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def summary(self) -> str:
        return f"restore to {self.target}: done in {self.seconds:.1f} s"

    def details(self) -> list[str]:
        return [f"  {st.seconds:7.1f} s  {st.name}" + (f" — {st.detail}" if st.detail else "")
                for st in self.steps] + [
            f"  newest tick: {self.newest_tick_before_replay} from WAL, "
            f"{self.newest_tick_after} after landing replay"]

    def timed(self, name: str, fn: Callable[[], str | None]):
        self.current = name
        t0 = time.monotonic()
        detail = fn() or ""
        self.steps.append(Step(name, time.monotonic() - t0, detail))
        log.info("restore step", step=name, seconds=round(self.steps[-1].seconds, 2),
                 detail=detail)


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


def healthy(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as c:
            return c.execute("SELECT NOT pg_is_in_recovery()").fetchone()[0]
    except psycopg.Error:
        return False


def _pg_ctl(tool: Tool, bindir: str, data: Path, *args: str, timeout: float):
    return tool.exec([str(Path(bindir) / "pg_ctl"), "-D", str(data), *args], timeout=timeout)


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
    status = info.get("status") or {}
    backups = info.get("backup") or []
    if not backups:
        raise RestoreRefused(f"the repository holds no backup set of stanza {tool.stanza} "
                             f"({status.get('message')}): nothing to restore from")
    if status.get("code") not in (0, None):
        raise Failed(f"pgBackRest stanza {tool.stanza}: {status.get('message')}")
    # pgBackRest's own rule (restore.c): the newest set whose stop time is before the target,
    # in whole seconds. It would fall back to the newest set when none is; never let it.
    epoch = int(target.timestamp())
    chosen = next((b for b in reversed(backups) if b["timestamp"]["stop"] < epoch), None)
    if chosen is None:
        first = backups[0]
        raise RestoreRefused(
            f"no backup set finished before the target {target.isoformat()}: the oldest, "
            f"{first['label']}, finished at "
            f"{datetime.fromtimestamp(first['timestamp']['stop'], UTC).isoformat()}; "
            "choose a later target")
    plan = Plan(data, chosen["label"], datetime.fromtimestamp(chosen["timestamp"]["stop"], UTC),
                int((chosen.get("info") or {}).get("size") or 0), running)
    free = shutil.disk_usage(data.parent).free
    need = int(plan.backup_bytes * 1.1) + (256 << 20)
    if free < need:
        raise Failed(f"not enough disk space beside {data}: {free >> 20} MB free, the restore "
                     f"needs about {need >> 20} MB while the old data directory is kept")
    seg_size = 16 << 20  # PostgreSQL's default, which tickstack never changes (initdb)
    if running:
        with psycopg.connect(admin_dsn, connect_timeout=3, autocommit=True) as conn:
            seg_size = int(conn.execute("SELECT setting FROM pg_settings "
                                        "WHERE name = 'wal_segment_size'").fetchone()[0])
            _archive_up_to_now(conn)
    plan.last_commit, plan.last_commit_wal = restore_reach.check(
        tool, bindir, info, chosen, target, timeline, seg_size)
    return plan


def _archive_up_to_now(conn: psycopg.Connection) -> None:
    """A running primary's WAL up to now into the archive: a commit (so that a target up to
    now has a commit after it to stop at) and a WAL switch, then wait until it is archived.
    Without it, what the primary committed since its last switch would be missing from the
    archive (a fast shutdown does not archive the current segment)."""
    conn.execute("SELECT pg_current_xact_id()")  # assigns an xid: its commit is in the WAL
    wal = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    deadline = time.monotonic() + ARCHIVE_NOW_SECONDS
    while time.monotonic() < deadline:
        last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
        if last and wal_archive.WAL_NAME.match(last[:24]) and last[:24] >= wal:
            return
        time.sleep(0.5)
    log.warning("the primary's newest WAL did not reach the archive in time; the restore "
                "can only reach what is archived", wal=wal, seconds=ARCHIVE_NOW_SECONDS)


def pitr(tool: Tool, bindir: str, target: datetime, *, force: bool, admin_dsn: str,
         report: RestoreReport, timeline: str = "latest", config_file: str | None = None
         ) -> None:
    """`timeline`: follow the newest timeline in the archive (`latest`, PostgreSQL's default:
    includes what happened after an earlier restore) or stay on the backup's (`current`).
    `config_file`: the server's postgresql.conf outside its data directory, which the
    restored server is started with (TICKSTACK_PG_CONFIG_FILE); required."""
    plans: list[Plan] = []
    if not config_file:
        raise RestoreRefused("TICKSTACK_PG_CONFIG_FILE is not set: the restored server would "
                             "start with the configuration inside the backup (an older "
                             "pg_hba.conf, TLS off); set it to the primary's postgresql.conf "
                             "outside its data directory")
    if not Path(config_file).is_file():
        raise Failed(f"TICKSTACK_PG_CONFIG_FILE {config_file}: no such file (the primary's "
                     "postgresql.conf outside its data directory)")

    def check() -> str:
        plans.append(preflight(tool, bindir, target, force=force, admin_dsn=admin_dsn,
                               timeline=timeline))
        return plans[0].detail()

    # A restore killed before it could put things back left its note: undo it first.
    partial = _undo_interrupted(tool, bindir, pg_target(tool.config, tool.stanza)[0],
                                admin_dsn, report, config_file)
    report.timed("preflight (nothing touched yet)", check)
    plan = plans[0]
    data = plan.data
    was_running = [False]
    # The note beside the data directory says where the old one goes, before it is touched
    # (workers/ops/restore_marker.py); an unfinished restore of an earlier run is no "old".
    aside = None if partial or not (data.exists() and any(data.iterdir())) else \
        data.with_name(f"{data.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
    marker = restore_marker.begin(data, aside=aside, target=target.isoformat())

    def stop_and_move() -> str:
        if (data / "postmaster.pid").exists():
            was_running[0] = aside is not None  # a partial restore's server is not restarted
            restore_marker.update(marker, was_running=was_running[0])
            r = _pg_ctl(tool, bindir, data, "stop", "-m", "fast", "-w", "-t", "60", timeout=90)
            if r.returncode != 0:
                _pg_ctl(tool, bindir, data, "stop", "-m", "immediate", "-w", "-t", "30",
                        timeout=60)
        crashpoint.reach("restore_stopped")
        kept = ""
        if data.exists() and any(data.iterdir()):
            if aside is None:  # an earlier unfinished restore: kept for a look, not put back
                failed = data.with_name(f"{data.name}.failed-restore-"
                                        f"{time.strftime('%Y%m%dT%H%M%S')}")
                data.rename(failed)
                kept = f"; an earlier unfinished restore moved to {failed}"
            else:
                data.rename(aside)
                report.moved_aside = str(aside)
        _fresh_dir(tool, data)
        return (f"old data directory moved to {report.moved_aside}" if report.moved_aside
                else "no old data directory") + kept

    def restore() -> str:
        # pgBackRest wants "YYYY-MM-DD HH:MM:SS[.US]+TZ", not ISO 8601's "T".
        when = target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        r = tool.run("restore", f"--set={plan.backup}", "--type=time", f"--target={when}",
                     f"--target-timeline={timeline}", "--target-action=promote",
                     timeout=6 * 3600)
        if r.returncode != 0:
            raise BackupError(lock_held(r.stderr or r.stdout) or
                              f"pgbackrest restore failed (exit {r.returncode}): "
                              f"{tail(r.stderr or r.stdout, 3)[-800:]}")
        crashpoint.reach("restore_restored")
        lines = [ln for ln in r.stdout.splitlines() if "restore backup set" in ln]
        done = lines[-1].split("P00", 1)[-1].strip() if lines else "restored"
        dropped = server_start.drop_security_overrides(data)
        return done + (f"; removed from its postgresql.auto.conf: "
                       f"{', '.join(ln.split('=', 1)[0].strip() for ln in dropped)}"
                       if dropped else "")

    def start_and_replay() -> str:
        log_file = data.parent / "postgres.log"
        r = server_start.start(tool, bindir, data, log_file, config_file, wait=600)
        if r.returncode != 0:
            raise BackupError(f"PostgreSQL did not start after the restore (see {log_file}): "
                              f"{r.stderr.strip()[-500:]}")
        crashpoint.reach("restore_replaying")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            primary, refused = server_start.probe(admin_dsn)
            if primary:
                return "WAL replayed to the target, promoted"
            # Recovery that cannot reach the target stops the server: say why at once.
            if not (data / "postmaster.pid").exists():
                raise BackupError(f"PostgreSQL stopped during WAL replay: "
                                  f"{_last_fatal(log_file)} (see {log_file})")
            # A running server that refuses the admin for another reason than recovery (TLS,
            # pg_hba.conf): waiting will not change it, and recovery is not to blame.
            if refused and not any(s in refused for s in server_start.STARTING):
                raise BackupError(f"the restored server runs but refuses the admin's "
                                  f"connection: {refused} (its configuration: "
                                  f"{config_file}; see {log_file})")
            time.sleep(0.5)
        raise BackupError(f"still in recovery after 600 s (see {log_file})")

    try:
        report.timed("stop primary, keep old data aside", stop_and_move)
        report.timed(f"pgbackrest restore (backup set {plan.backup})", restore)
        report.timed("WAL replay up to the target, promote", start_and_replay)
    except BaseException as e:
        step = report.current
        # A second SIGINT/SIGTERM does not cut the put-back short: we are stopping anyway.
        with interrupts.deferred(raise_after=False):
            if aside is None or aside.exists():
                what = put_back(tool, bindir, data, str(aside) if aside else None,
                                start=was_running[0], admin_dsn=admin_dsn,
                                config_file=config_file)
            else:  # stopped, never moved: the old data directory is where it was
                what = _start_again(tool, bindir, data, admin_dsn, config_file) \
                    if was_running[0] else \
                    "the old data directory was never moved"
            if aside is not None:  # the old one is in place: nothing left to undo
                restore_marker.clear(data)
        if isinstance(e, KeyboardInterrupt):
            raise interrupts.Interrupted(f"interrupted by {interrupts.last_signal()} during "
                                         f"'{step}': {what}") from None
        if not isinstance(e, Exception):
            raise
        reason = str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}"
        raise BackupError(f"{reason} — {what}") from None
    restore_marker.clear(data)  # promoted: the restore is the primary now


def _undo_interrupted(tool: Tool, bindir: str, data: Path, admin_dsn: str,
                      report: RestoreReport, config_file: str | None) -> bool:
    """A note left by a restore that was killed: put its old data directory back (started
    again when it was running). True when there was none to put back, so the data directory
    holds an unfinished restore that this one replaces."""
    m = restore_marker.read(data)
    if m is None:
        return False
    if restore_marker.alive(m):
        raise RestoreRefused(f"another restore (pid {m.pid}, to {m.target}) is running on "
                             f"{data}: wait for it")
    stop = lambda d: _pg_ctl(tool, bindir, d, "stop", "-m", "immediate", "-w",  # noqa: E731
                             "-t", "60", timeout=90)
    try:
        what = restore_marker.undo(m, stop_server=stop)
    except restore_marker.NotUndoable:
        report.steps.append(Step("interrupted restore found", 0.0, "no old data to put back; "
                                 "this restore replaces the unfinished one"))
        return True
    if m.was_running:
        what += "; " + _start_again(tool, bindir, data, admin_dsn, config_file)
    report.steps.append(Step("interrupted restore undone", 0.0, what))
    log.warning("an interrupted restore was undone", detail=what)
    return False


def _start_again(tool: Tool, bindir: str, data: Path, admin_dsn: str,
                 config_file: str | None) -> str:
    """The old primary, never moved, running again: an interrupt may have come before, during
    or after its stop (a fast shutdown goes on without pg_ctl: wait for its end first)."""
    if healthy(admin_dsn):
        return "the old primary is still running"
    _pg_ctl(tool, bindir, data, "stop", "-m", "fast", "-w", "-t", "60", timeout=90)
    log_file = data.parent / "postgres.log"
    r = server_start.start(tool, bindir, data, log_file, config_file, wait=120)
    if r.returncode != 0 or not healthy(admin_dsn):
        return f"the old primary did not start again (see {log_file})"
    return "the old primary is running again"


def _fresh_dir(tool: Tool, data: Path) -> None:
    data.mkdir(mode=0o700, exist_ok=True)
    if tool.os_user and os.geteuid() == 0:
        import pwd

        u = pwd.getpwnam(tool.os_user)
        os.chown(data, u.pw_uid, u.pw_gid)
    os.chmod(data, 0o700)


def put_back(tool: Tool, bindir: str, data: Path, aside: str | None, *, start: bool,
             admin_dsn: str, config_file: str | None = None) -> str:
    """After a failed restore: stop what runs on the restored directory, keep it for a look
    (renamed), move the old data directory back, and start it when it was running. Returns
    what was done, for the error message."""
    try:
        if (data / "postmaster.pid").exists():
            _pg_ctl(tool, bindir, data, "stop", "-m", "immediate", "-w", "-t", "60", timeout=90)
        failed = None
        if data.exists() and any(data.iterdir()):
            failed = data.with_name(f"{data.name}.failed-restore-{time.strftime('%Y%m%dT%H%M%S')}")
            data.rename(failed)
        elif data.exists():
            data.rmdir()
        kept = f" (the failed restore is kept in {failed})" if failed else ""
        if aside is None:
            _fresh_dir(tool, data)
            return (f"there was no old data directory to put back{kept}; run the restore "
                    "again")
        Path(aside).rename(data)
        if not start:
            return ("the old data directory is back in place, not started (it was not "
                    f"running){kept}")
        log_file = data.parent / "postgres.log"
        r = server_start.start(tool, bindir, data, log_file, config_file, wait=120)
        if r.returncode != 0 or not healthy(admin_dsn):
            return (f"the old data directory is back in place but did not start again (see "
                    f"{log_file}){kept}")
        return f"the old primary is back in place and running{kept}"
    except Exception as e:  # say where things are; never hide the original failure
        return (f"putting the old primary back failed too ({type(e).__name__}: {e}); its data "
                f"directory is {aside}")


def _last_fatal(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "its log cannot be read"
    fatal = [ln.split("FATAL:", 1)[1].strip() for ln in lines if "FATAL:" in ln]
    return fatal[-1] if fatal else "no FATAL line in its log"


def verify(conn: psycopg.Connection, expected: list[tuple[str, str]]) -> str:
    """Extensions present; the ledger a prefix of sql/ with the same checksums."""
    ext = {n for (n,) in conn.execute("SELECT extname FROM pg_extension")}
    missing = {"vector", "timescaledb"} - ext
    if missing:
        raise BackupError(f"restored database lacks extensions {sorted(missing)}")
    applied = conn.execute("SELECT filename, sha256 FROM ops.schema_migrations "
                           "ORDER BY filename").fetchall()
    if [tuple(a) for a in applied] != expected[:len(applied)]:
        raise BackupError("the restored migration ledger does not match sql/ (files or "
                          "checksums differ)")
    pending = len(expected) - len(applied)
    return (f"extensions ok; ledger has {len(applied)} migrations, checksums match"
            + (f"; {pending} newer in sql/ (run `workers migrate`)" if pending else ""))


def newest_tick(conn: psycopg.Connection) -> str | None:
    v = conn.execute("SELECT max(event_time) FROM market_data.btc_ticks").fetchone()[0]
    return v.isoformat() if v else None


def replay_gap(conn: psycopg.Connection, landing: Landing, target: datetime) -> tuple[int, int]:
    """Load the landing objects the restored database lacks (new, or changed since T):
    (objects loaded, rows inserted)."""
    # Live-stream parts not yet folded into their bucket object (the stream stopped before the
    # bucket closed): compact them first, so every accepted trade is under raw/.
    compact_all(conn, landing)
    keys = gap_keys(conn, landing, target)
    # The restored registry may predate objects that changed after T: each object is checked
    # against the checksum stored with it, and only what the registry lacks is loaded.
    s = replay(conn, landing, keys, source="restore", registry_is_current=False,
               skip_unchanged=True)
    return s.buckets_unchanged, s.inserted


def gap_keys(conn: psycopg.Connection, landing: Landing, target: datetime) -> list[str]:
    """The landing objects a restore to `target` may lack, from one listing of landing and the
    restored registry: objects the registry does not hold, and objects whose ETag is not the one
    registered with them (rewritten since). Objects registered without an ETag (before issue
    19) fall back to their age: modified within LANDING_MARGIN of the target or after."""
    since = target - LANDING_MARGIN
    registry = {(m, a, to_us(b)): etag for m, a, b, etag in conn.execute(
        "SELECT market, asset, bucket_5m, metadata->>'etag' FROM landing.raw_blobs_5m")}
    listed = {o["Key"]: o for o in landing.listing(RAW)}
    # Keys that are not bucket objects are skipped and reported (landing_keys), never loaded.
    keys = []
    for k in landing_keys(landing, RAW):
        b = bucket_of_key(k)
        o = listed.get(k, {})
        if b not in registry:
            keys.append(k)
        elif registry[b] is not None:
            if o.get("ETag") != registry[b]:
                keys.append(k)
        elif o.get("LastModified") is None or o["LastModified"] >= since:
            keys.append(k)
    return keys
