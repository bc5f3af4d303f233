"""The steps of the point-in-time restore that touch the primary (workers/ops/restore.py, steps
2–3): stop it and move its data directory aside, pgBackRest's restore, start and replay WAL up
to the target; and the way back — put the old data directory back after a failure, or undo a
restore that was killed (its note, workers/ops/restore_marker.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from workers.core import crashpoint, interrupts, logs
from workers.core.errors import Failed
from workers.ops import restore_marker, server_start
from workers.ops.backup import BackupError, Tool, lock_held, tail
from workers.ops.restore_checks import healthy
from workers.ops.restore_reach import RestoreRefused

if TYPE_CHECKING:
    from workers.ops.restore import RestoreReport

log = logs.get("restore")


def _pg_ctl(tool: Tool, bindir: str, data: Path, *args: str, timeout: float):
    return tool.exec([str(Path(bindir) / "pg_ctl"), "-D", str(data), *args], timeout=timeout)


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S")


@dataclass
class Rebuild:
    """One restore of the primary's data directory, from the move aside to the promotion.
    `aside`: where the old data directory goes (None: an earlier unfinished restore is there,
    which is kept for a look, not put back)."""

    tool: Tool
    bindir: str
    data: Path
    aside: Path | None
    marker: Path
    report: RestoreReport
    admin_dsn: str
    config_file: str
    was_running: bool = False

    def stop_and_move(self) -> str:
        data, aside = self.data, self.aside
        if (data / "postmaster.pid").exists():
            self.was_running = aside is not None  # a partial restore's server is not restarted
            restore_marker.update(self.marker, was_running=self.was_running)
            r = _pg_ctl(self.tool, self.bindir, data, "stop", "-m", "fast", "-w", "-t", "60",
                        timeout=90)
            if r.returncode != 0:
                _pg_ctl(self.tool, self.bindir, data, "stop", "-m", "immediate", "-w", "-t",
                        "30", timeout=60)
        crashpoint.reach("restore_stopped")
        kept = ""
        if data.exists() and any(data.iterdir()):
            if aside is None:  # an earlier unfinished restore: kept for a look, not put back
                failed = data.with_name(f"{data.name}.failed-restore-{_stamp()}")
                data.rename(failed)
                kept = f"; an earlier unfinished restore moved to {failed}"
            else:
                data.rename(aside)
                self.report.moved_aside = str(aside)
        _fresh_dir(self.tool, data)
        return (f"old data directory moved to {self.report.moved_aside}"
                if self.report.moved_aside else "no old data directory") + kept

    def restore(self, backup: str, target: datetime, timeline: str) -> str:
        # pgBackRest wants "YYYY-MM-DD HH:MM:SS[.US]+TZ", not ISO 8601's "T".
        when = target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        r = self.tool.run("restore", f"--set={backup}", "--type=time", f"--target={when}",
                          f"--target-timeline={timeline}", "--target-action=promote",
                          timeout=6 * 3600)
        if r.returncode != 0:
            raise BackupError(lock_held(r.stderr or r.stdout) or
                              f"pgbackrest restore failed (exit {r.returncode}): "
                              f"{tail(r.stderr or r.stdout, 3)[-800:]}")
        crashpoint.reach("restore_restored")
        lines = [ln for ln in r.stdout.splitlines() if "restore backup set" in ln]
        done = lines[-1].split("P00", 1)[-1].strip() if lines else "restored"
        dropped = server_start.drop_security_overrides(self.data)
        return done + (f"; removed from its postgresql.auto.conf: "
                       f"{', '.join(ln.split('=', 1)[0].strip() for ln in dropped)}"
                       if dropped else "")

    def start_and_replay(self) -> str:
        data, config_file = self.data, self.config_file
        log_file = data.parent / "postgres.log"
        r = server_start.start(self.tool, self.bindir, data, log_file, config_file, wait=600)
        if r.returncode != 0:
            raise BackupError(f"PostgreSQL did not start after the restore (see {log_file}): "
                              f"{r.stderr.strip()[-500:]}")
        crashpoint.reach("restore_replaying")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            primary, refused = server_start.probe(self.admin_dsn)
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

    def roll_back(self, e: BaseException) -> BaseException:
        """After a failure or an interrupt of a step: the old primary as it was. Returns what to
        raise: the failure, saying what was put back."""
        step = self.report.current
        # A second SIGINT/SIGTERM does not cut the put-back short: we are stopping anyway.
        with interrupts.deferred(raise_after=False):
            if self.aside is None or self.aside.exists():
                what = put_back(self.tool, self.bindir, self.data,
                                str(self.aside) if self.aside else None,
                                start=self.was_running, admin_dsn=self.admin_dsn,
                                config_file=self.config_file)
            else:  # stopped, never moved: the old data directory is where it was
                what = _start_again(self.tool, self.bindir, self.data, self.admin_dsn,
                                    self.config_file) if self.was_running else \
                    "the old data directory was never moved"
            if self.aside is not None:  # the old one is in place: nothing left to undo
                restore_marker.clear(self.data)
        if isinstance(e, KeyboardInterrupt):
            return interrupts.Interrupted(f"interrupted by {interrupts.last_signal()} during "
                                          f"'{step}': {what}")
        if not isinstance(e, Exception):
            return e
        reason = str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}"
        return BackupError(f"{reason} — {what}")


def undo_interrupted(tool: Tool, bindir: str, data: Path, admin_dsn: str,
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
        report.note("interrupted restore found", "no old data to put back; this restore "
                    "replaces the unfinished one")
        return True
    if m.was_running:
        what += "; " + _start_again(tool, bindir, data, admin_dsn, config_file)
    report.note("interrupted restore undone", what)
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
            failed = data.with_name(f"{data.name}.failed-restore-{_stamp()}")
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
