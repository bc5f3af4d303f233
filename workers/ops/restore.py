"""`workers restore --target-time T`: the disaster-recovery rebuild of the primary.

  1. refuse to touch a running, healthy primary unless forced;
  2. stop it if it runs; move the old data directory aside (never delete it);
  3. pgBackRest restores the newest backup before T and PostgreSQL replays archived WAL up to T,
     then promotes (point-in-time recovery);
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from workers.core import logs
from workers.core.errors import Refused
from workers.core.ticks import to_us
from workers.db.ingest import landing_keys, replay
from workers.db.stream_commit import compact_all
from workers.landing.store import RAW, Landing, bucket_of_key
from workers.ops.backup import BackupError, Tool

log = logs.get("restore")

# Landing objects modified this long before the target may belong to transactions that
# committed after it (an object is written before its rows commit): replay them too.
LANDING_MARGIN = timedelta(hours=1)


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
    cp.read(config_path)
    if not cp.has_section(stanza):
        raise RestoreRefused(f"{config_path} has no [{stanza}] section")
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


def pitr(tool: Tool, bindir: str, target: datetime, *, force: bool, admin_dsn: str,
         report: RestoreReport, timeline: str = "latest") -> None:
    """`timeline`: follow the newest timeline in the archive (`latest`, PostgreSQL's default:
    includes what happened after an earlier restore) or stay on the backup's (`current`)."""
    data, _, _ = pg_target(tool.config, tool.stanza)
    if healthy(admin_dsn) and not force:
        raise RestoreRefused("the primary is running and healthy: refusing to overwrite it "
                             "(pass --force to rebuild it anyway; its data directory is kept "
                             "aside, not deleted)")

    def stop_and_move() -> str:
        if (data / "postmaster.pid").exists():
            r = _pg_ctl(tool, bindir, data, "stop", "-m", "fast", "-w", "-t", "60", timeout=90)
            if r.returncode != 0:
                _pg_ctl(tool, bindir, data, "stop", "-m", "immediate", "-w", "-t", "30",
                        timeout=60)
        if data.exists() and any(data.iterdir()):
            aside = data.with_name(f"{data.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
            data.rename(aside)
            report.moved_aside = str(aside)
        data.mkdir(mode=0o700, exist_ok=True)
        if tool.os_user and os.geteuid() == 0:
            import pwd

            u = pwd.getpwnam(tool.os_user)
            os.chown(data, u.pw_uid, u.pw_gid)
        os.chmod(data, 0o700)
        return f"old data directory moved to {report.moved_aside}" if report.moved_aside else \
            "no old data directory"

    report.timed("stop primary, keep old data aside", stop_and_move)

    def restore() -> str:
        # pgBackRest wants "YYYY-MM-DD HH:MM:SS[.US]+TZ", not ISO 8601's "T".
        when = target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        r = tool.run("restore", "--type=time", f"--target={when}",
                     f"--target-timeline={timeline}", "--target-action=promote",
                     timeout=6 * 3600)
        if r.returncode != 0:
            raise BackupError(f"pgbackrest restore failed (exit {r.returncode}): "
                              f"{(r.stderr or r.stdout).strip()[-800:]}")
        lines = [ln for ln in r.stdout.splitlines() if "restore backup set" in ln]
        return lines[-1].split("P00", 1)[-1].strip() if lines else "restored"

    report.timed("pgbackrest restore (newest backup before the target)", restore)

    def start_and_replay() -> str:
        log_file = data.parent / "postgres.log"
        r = _pg_ctl(tool, bindir, data, "-l", str(log_file), "-w", "-t", "600", "start",
                    timeout=660)
        if r.returncode != 0:
            raise BackupError(f"PostgreSQL did not start after the restore (see {log_file}): "
                              f"{r.stderr.strip()[-500:]}")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if healthy(admin_dsn):
                return "WAL replayed to the target, promoted"
            # Recovery that cannot reach the target stops the server: say why at once.
            if not (data / "postmaster.pid").exists():
                raise BackupError(f"PostgreSQL stopped during WAL replay: "
                                  f"{_last_fatal(log_file)} (see {log_file})")
            time.sleep(0.5)
        raise BackupError(f"still in recovery after 600 s (see {log_file})")

    report.timed("WAL replay up to the target, promote", start_and_replay)


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
