"""The database host's tools (pgBackRest, pg_ctl, pg_waldump pipelines) as child processes
that never outlive an interrupted or timed-out command.

Each tool runs in a process group of its own (a new session), so the whole tree can be
stopped: pgBackRest's `local` workers are its children and hold its lock (the lock file's
descriptor is inherited); killed alone, the main process leaves them running for up to its
protocol timeout with the lock held. On an interrupt (SIGINT or SIGTERM, which the CLI turns
into KeyboardInterrupt) or a timeout the group gets SIGTERM — pgBackRest ends on it, cleanly,
and its workers with it — then, after STOP_GRACE_SECONDS, SIGKILL; the command waits for the
group to be gone (bounded) before it goes on. A PostgreSQL server that `pg_ctl start` launched
is not in the group (pg_ctl detaches it with setsid): stopping pg_ctl never stops a server.

pgBackRest's remote processes on the database host are children of its TLS server; they end
when the connection of the workers they serve closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from workers.core import interrupts

STOP_GRACE_SECONDS = 20.0  # SIGTERM to SIGKILL
KILL_WAIT_SECONDS = 10.0  # after SIGKILL, for the group to be gone


class Timeout(Exception):
    """The tool did not finish in time; its process group was stopped."""


def run(cmd: list[str], *, env: dict[str, str], timeout: float,
        **popen_kw) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(cmd, capture_output=True, text=True)` whose whole process group is
    stopped (and waited for) when the caller is interrupted or the timeout passes."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                         **popen_kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with interrupts.deferred():
            stop_group(p)
        raise Timeout(f"{cmd[0]} {cmd[-1]}: no answer within {timeout:.0f} s") from None
    except BaseException:  # KeyboardInterrupt (SIGINT/SIGTERM), or anything else
        with interrupts.deferred():
            stop_group(p)
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal is still a member
        return True
    return True


def stop_group(p: subprocess.Popen, *, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the child's process group, wait (bounded), SIGKILL what is left, reap."""
    pgid = p.pid  # start_new_session: the child leads its own group
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT_SECONDS)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if p.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            continue
        break
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=1)
    for f in (p.stdout, p.stderr):
        if f is not None:
            f.close()


def lock_holders(lock_file: str) -> list[tuple[int, str]]:
    """(pid, command line) of the processes that have `lock_file` open (a flock is held through
    an open descriptor), from /proc; empty where /proc does not show them."""
    try:
        target = os.stat(lock_file)
    except OSError:
        return []
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            for fd in (d / "fd").iterdir():
                with contextlib.suppress(OSError):
                    st = fd.stat()
                    if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                        cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                            errors="replace").strip()
                        out.append((int(d.name), cmd))
                        break
        except OSError:  # gone, or not ours to look at
            continue
    return sorted(out)


def lock_owner(lock_file: str) -> int | None:
    """The pid pgBackRest wrote into its lock file (the process that took the lock)."""
    try:
        return int(json.loads(Path(lock_file).read_text()).get("pid"))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
