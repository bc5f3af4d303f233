"""`workers restore --target-time T`: the disaster-recovery rebuild of the primary.

Its pre-flight checks are workers/ops/restore_checks.py (and restore_reach.py), the steps that
touch the primary and the way back are workers/ops/restore_steps.py; this module runs them in
order and holds the steps after the promotion (4, 5).

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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from workers.core import logs
from workers.core.sqlfiles import query
from workers.core.ticks import to_us
from workers.db.ingest import landing_keys, replay
from workers.db.stream_commit import compact_all
from workers.landing.store import RAW, Landing, bucket_of_key
from workers.ops import restore_marker
from workers.ops.backup import BackupError, Tool
from workers.ops.restore_checks import Plan, config_file_ready, pg_target, preflight
from workers.ops.restore_steps import Rebuild, undo_interrupted

log = logs.get("restore")

# Landing objects modified this long before the target may belong to transactions that
# committed after it (an object is written before its rows commit): replay them too.
LANDING_MARGIN = timedelta(hours=1)


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

    def note(self, name: str, detail: str) -> None:
        """A step that took no time of its own (found, or undone, before the restore)."""
        self.steps.append(Step(name, 0.0, detail))

    def timed(self, name: str, fn: Callable[[], str | None]):
        self.current = name
        t0 = time.monotonic()
        detail = fn() or ""
        self.steps.append(Step(name, time.monotonic() - t0, detail))
        log.info("restore step", step=name, seconds=round(self.steps[-1].seconds, 2),
                 detail=detail)


def pitr(tool: Tool, bindir: str, target: datetime, *, force: bool, admin_dsn: str,
         report: RestoreReport, timeline: str = "latest", config_file: str | None = None
         ) -> None:
    """`timeline`: follow the newest timeline in the archive (`latest`, PostgreSQL's default:
    includes what happened after an earlier restore) or stay on the backup's (`current`).
    `config_file`: the server's postgresql.conf outside its data directory, which the
    restored server is started with (TICKSTACK_PG_CONFIG_FILE); required."""
    config_file_ready(config_file)
    plans: list[Plan] = []

    def check() -> str:
        plans.append(preflight(tool, bindir, target, force=force, admin_dsn=admin_dsn,
                               timeline=timeline))
        return plans[0].detail()

    # A restore killed before it could put things back left its note: undo it first.
    partial = undo_interrupted(tool, bindir, pg_target(tool.config, tool.stanza)[0],
                               admin_dsn, report, config_file)
    report.timed("preflight (nothing touched yet)", check)
    plan = plans[0]
    data = plan.data
    # The note beside the data directory says where the old one goes, before it is touched
    # (workers/ops/restore_marker.py); an unfinished restore of an earlier run is no "old".
    aside = None if partial or not (data.exists() and any(data.iterdir())) else \
        data.with_name(f"{data.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
    marker = restore_marker.begin(data, aside=aside, target=target.isoformat())
    run = Rebuild(tool, bindir, data, aside, marker, report, admin_dsn, config_file)
    try:
        report.timed("stop primary, keep old data aside", run.stop_and_move)
        report.timed(f"pgbackrest restore (backup set {plan.backup})",
                     lambda: run.restore(plan.backup, target, timeline))
        report.timed("WAL replay up to the target, promote", run.start_and_replay)
    except BaseException as e:
        err = run.roll_back(e)
        if err is e:
            raise
        raise err from None
    restore_marker.clear(data)  # promoted: the restore is the primary now


def verify(conn: psycopg.Connection, expected: list[tuple[str, str]]) -> str:
    """Extensions present; the ledger a prefix of sql/ with the same checksums."""
    ext = {n for (n,) in conn.execute(query(__package__, "extensions"))}
    missing = {"vector", "timescaledb"} - ext
    if missing:
        raise BackupError(f"restored database lacks extensions {sorted(missing)}")
    applied = conn.execute(query(__package__, "migration_ledger")).fetchall()
    if [tuple(a) for a in applied] != expected[:len(applied)]:
        raise BackupError("the restored migration ledger does not match sql/ (files or "
                          "checksums differ)")
    pending = len(expected) - len(applied)
    return (f"extensions ok; ledger has {len(applied)} migrations, checksums match"
            + (f"; {pending} newer in sql/ (run `workers migrate`)" if pending else ""))


def newest_tick(conn: psycopg.Connection) -> str | None:
    v = conn.execute(query(__package__, "newest_tick")).fetchone()[0]
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
        query(__package__, "registry_etags"))}
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
