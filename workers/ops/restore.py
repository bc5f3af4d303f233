"""`workers restore --target-time T`: the disaster-recovery rebuild of the primary.

  1. check everything that can be checked while the primary is untouched (`preflight`): the
     target is not in the future; a running, healthy primary is not overwritten unless forced;
     pgBackRest reads its configuration and repository; a backup set finished before T; the
     archived WAL from that backup on reaches past T (no hole on the way, a commit after T);
     the disk holds the restore beside the old data. A forced restore of a running primary
     first archives its WAL up to now, so nothing it committed before T is missing;
  2. stop the primary if it runs; move the old data directory aside (never delete it);
  3. pgBackRest restores that backup set and PostgreSQL replays archived WAL up to T, then
     promotes (point-in-time recovery). If any of it fails, the old data directory is put back
     (and started again when it was running): a failed restore leaves the primary as it was;
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
import re
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from workers.core import logs
from workers.core.errors import Failed, Refused
from workers.core.ticks import to_us
from workers.db.ingest import landing_keys, replay
from workers.db.stream_commit import compact_all
from workers.landing.store import RAW, Landing, bucket_of_key
from workers.ops import server_start, wal_archive
from workers.ops.backup import BackupError, Tool, tail

log = logs.get("restore")

# Landing objects modified this long before the target may belong to transactions that
# committed after it (an object is written before its rows commit): replay them too.
LANDING_MARGIN = timedelta(hours=1)
# How far back from the end of the replayable WAL to look for the newest commit.
COMMIT_SCAN_SEGMENTS = 8
# A forced restore of a running primary archives its WAL up to now first; this long at most.
ARCHIVE_NOW_SECONDS = 60


class RestoreRefused(Refused):
    pass


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
    _check_reachable(tool, bindir, info, chosen, target, timeline, seg_size, plan)
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


def _check_reachable(tool: Tool, bindir: str, info: dict, chosen: dict, target: datetime,
                     timeline: str, seg_size: int, plan: Plan) -> None:
    """Recovery from the chosen set stops at the first missing WAL segment or the end of the
    archive, and it must find a commit after the target before that: refuse when it cannot."""
    db_id = (chosen.get("database") or {}).get("id")
    arch = next((a for a in info.get("archive") or []
                 if (a.get("database") or {}).get("id") == db_id), None)
    backup = next((b for b in wal_archive.backups_of(info, db_id, seg_size)
                   if b.label == chosen["label"]), None)
    if arch is None or backup is None:
        raise Failed(f"backup set {chosen['label']} has no WAL archive in the repository")
    archive = wal_archive.read_archive(tool, arch["id"], seg_size)
    tli = wal_archive.recovery_timeline(archive, backup, timeline)
    path = wal_archive.recovery_path(archive, backup, tli, seg_size)
    if path is None:
        raise RestoreRefused(f"timeline {tli} does not descend from backup set {backup.label} "
                             f"(timeline {backup.tli}): use --timeline current")
    reach, missing = wal_archive.replayable(archive, path)
    hole = (f"; the WAL archive misses {wal_archive.wal_name(*missing, seg_size)}, so "
            "recovery stops before it" if missing else "")
    if missing and missing[0] == backup.tli and backup.start <= missing[1] <= backup.stop:
        raise RestoreRefused(f"backup set {backup.label} cannot be restored{hole} (inside the "
                             "backup's own WAL)")
    for tli_seg in reversed(reach[-COMMIT_SCAN_SEGMENTS:]):
        name = wal_archive.wal_name(*tli_seg, seg_size)
        when = _last_commit_in(tool, bindir, archive.files[tli_seg], name)
        if when is not None:
            plan.last_commit, plan.last_commit_wal = when, name
            break
    if plan.last_commit is None:
        log.warning("no commit found in the newest archived WAL; the target is checked by "
                    "the recovery itself", segments=COMMIT_SCAN_SEGMENTS)
        return
    if target >= plan.last_commit:
        raise RestoreRefused(
            f"the target {target.isoformat()} is after the last archived commit "
            f"({plan.last_commit.isoformat()}, in {plan.last_commit_wal}){hole}: recovery "
            "could never reach it; choose a target before that commit")


_COMMIT = re.compile(r"desc: (?:COMMIT|ABORT)(?:_PREPARED)? "
                     r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{6}) UTC")


# pgBackRest compresses archived WAL by compress-type; the file name says which.
_DECOMPRESS = {".zst": "zstd -dcq", ".gz": "gzip -dc", ".lz4": "lz4 -dcq", ".bz2": "bzip2 -dc"}


def _last_commit_in(tool: Tool, bindir: str, repo_path: str, wal: str) -> datetime | None:
    """The time of the last commit (or abort: recovery stops at either) in one archived WAL
    segment: fetched with repo-get (archive-get needs the data directory's pg_control, which a
    disaster may have taken), decompressed into a private temporary directory, read with
    pg_waldump (in UTC)."""
    ext = repo_path[repo_path.rfind("."):] if "." in repo_path.rsplit("/", 1)[-1] else ""
    unpack = _DECOMPRESS.get(ext, "cat")
    get = " ".join(shlex.quote(a) for a in ("pgbackrest", f"--config={tool.config}",
                                             f"--stanza={tool.stanza}",
                                             "--log-level-console=error", "repo-get", repo_path))
    waldump = shlex.quote(str(Path(bindir) / "pg_waldump"))
    script = (f'set -o pipefail; d=$(mktemp -d) && trap \'rm -rf "$d"\' EXIT && '
              f'{get} | {unpack} > "$d/{wal}" && '
              f'{{ TZ=UTC {waldump} "$d/{wal}" 2>/dev/null | grep "desc: [CA][OB]" || true; }}')
    r = tool.exec(["bash", "-c", script], timeout=120)
    if r.returncode != 0:
        raise Failed(f"cannot read archived WAL {wal} (pgbackrest repo-get | "
                     f"{unpack.split()[0]}, exit {r.returncode}): "
                     f"{tail(r.stderr or r.stdout, 3)[-300:]}")
    found = _COMMIT.findall(r.stdout)
    if not found:
        return None
    day, us = found[-1]
    return datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(microsecond=int(us), tzinfo=UTC)


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

    report.timed("preflight (nothing touched yet)", check)
    plan = plans[0]
    data = plan.data
    was_running = [False]

    def stop_and_move() -> str:
        if (data / "postmaster.pid").exists():
            was_running[0] = True
            r = _pg_ctl(tool, bindir, data, "stop", "-m", "fast", "-w", "-t", "60", timeout=90)
            if r.returncode != 0:
                _pg_ctl(tool, bindir, data, "stop", "-m", "immediate", "-w", "-t", "30",
                        timeout=60)
        if data.exists() and any(data.iterdir()):
            aside = data.with_name(f"{data.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
            data.rename(aside)
            report.moved_aside = str(aside)
        _fresh_dir(tool, data)
        return f"old data directory moved to {report.moved_aside}" if report.moved_aside else \
            "no old data directory"

    report.timed("stop primary, keep old data aside", stop_and_move)

    def restore() -> str:
        # pgBackRest wants "YYYY-MM-DD HH:MM:SS[.US]+TZ", not ISO 8601's "T".
        when = target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        r = tool.run("restore", f"--set={plan.backup}", "--type=time", f"--target={when}",
                     f"--target-timeline={timeline}", "--target-action=promote",
                     timeout=6 * 3600)
        if r.returncode != 0:
            raise BackupError(f"pgbackrest restore failed (exit {r.returncode}): "
                              f"{tail(r.stderr or r.stdout, 3)[-800:]}")
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
        report.timed(f"pgbackrest restore (backup set {plan.backup})", restore)
        report.timed("WAL replay up to the target, promote", start_and_replay)
    except BaseException as e:
        what = put_back(tool, bindir, data, report.moved_aside, start=was_running[0],
                        admin_dsn=admin_dsn, config_file=config_file)
        if not isinstance(e, Exception):
            raise
        reason = str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}"
        raise BackupError(f"{reason} — {what}") from None


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
            return f"there was no old data directory to put back{kept}"
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
