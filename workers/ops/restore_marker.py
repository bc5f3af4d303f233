"""The note a restore keeps beside the data directory while the primary is in its hands, and
how an interrupted restore is undone.

`workers restore` writes `<data>.restore-in-progress` (JSON, beside the data directory) before
it stops the primary, and removes it once the restored server has promoted — or once the old
data directory is back after a failure or an interrupt. A note that is still there with its
process gone means the restore was killed (SIGKILL, a power cut) or its put-back was: the data
directory may be a partial restore, the old one aside. `undo` puts the old one back (the partial
restore is kept as `<data>.failed-restore-…`, never deleted); `python -m infra.local up` and the
next `workers restore` call it before anything else. Where there was no old data directory (the
primary was already gone) nothing can be put back: `undo` raises NotUndoable, whose message is
the one command that finishes the job — running the restore again.

Standard library only: the local environment (infra/local) reads the same note.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SUFFIX = ".restore-in-progress"


class MarkerError(Exception):
    """The note cannot be read: the message names the file."""


class NotUndoable(Exception):
    """No old data directory to put back; the message says what to run."""


@dataclass
class Marker:
    data: str  # the data directory being restored
    aside: str | None  # where the old one is (or goes); None: there was none
    target: str  # the restore's --target-time
    pid: int  # the restoring process
    pid_start: str | None  # its start time (/proc/<pid>/stat field 22): pid reuse is no match
    was_running: bool = False  # the old primary was running before the restore stopped it
    started: str = ""

    @property
    def path(self) -> Path:
        return path_for(Path(self.data))


def path_for(data: Path) -> Path:
    return data.with_name(data.name + SUFFIX)


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command's parentheses


def _write(m: Marker) -> None:
    p = m.path
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(m), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the note is on disk before the primary is touched
    finally:
        os.close(fd)


def begin(data: Path, *, aside: Path | None, target: str) -> Marker:
    """Write the note for this process; call before the primary is stopped or moved."""
    m = Marker(str(data), str(aside) if aside else None, target, os.getpid(),
               _proc_start(os.getpid()), started=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()))
    _write(m)
    return m


def update(m: Marker, **changes) -> None:
    for k, v in changes.items():
        setattr(m, k, v)
    _write(m)


def clear(data: Path) -> None:
    path_for(data).unlink(missing_ok=True)


def read(data: Path) -> Marker | None:
    p = path_for(data)
    try:
        raw = json.loads(p.read_text())
        return Marker(**raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        raise MarkerError(f"{p}: not a readable restore note ({type(e).__name__}: {e}); it "
                          f"says a restore of {data} did not finish — look at {data.parent} "
                          "and remove the note once the data directory is right") from None


def alive(m: Marker) -> bool:
    """Is the process that wrote the note still running (the same process, not a reused
    pid)?"""
    try:
        os.kill(m.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = _proc_start(m.pid)
    return start is None or m.pid_start is None or start == m.pid_start


def undo(m: Marker, *, stop_server: Callable[[Path], None]) -> str:
    """Put the old data directory back in place (not started); what was done. `stop_server`
    stops a PostgreSQL still running on the partial restore (its WAL replay)."""
    data = Path(m.data)
    aside = Path(m.aside) if m.aside else None
    if aside is not None and aside.exists():
        if (data / "postmaster.pid").exists():
            stop_server(data)
        kept = ""
        if data.exists() and any(data.iterdir()):
            failed = data.with_name(f"{data.name}.failed-restore-"
                                    f"{time.strftime('%Y%m%dT%H%M%S')}")
            data.rename(failed)
            kept = f"; the unfinished restore is kept in {failed}"
        elif data.exists():
            data.rmdir()
        aside.rename(data)
        clear(data)
        return f"the old data directory is back in place (from {aside}){kept}"
    if aside is not None:  # it was never moved (stopped before the move), or was put back
        clear(data)
        return "the old data directory was never moved"
    raise NotUndoable(
        f"an interrupted restore (to {m.target}) left {data} unfinished and there was no old "
        f"data directory to put back: finish it with `python -m workers restore "
        f"--target-time {m.target}` (the note {m.path} stays until a restore completes)")
