"""Process plumbing for the local environment: run as `postgres`, daemons, bounded stops."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path


class PartError(RuntimeError):
    """A part of the local environment failed; carries its name and the tail of its log."""

    def __init__(self, part: str, message: str, log: Path | None = None):
        self.part = part
        self.log = log
        tail = tail_of(log) if log else ""
        super().__init__(
            f"{part}: {message}" + (f"\n--- last lines of {log} ---\n{tail}" if tail else "")
        )


def tail_of(path: Path | None, lines: int = 25) -> str:
    if not path or not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16384))
        data = f.read().decode("utf-8", "replace")
    return "\n".join(data.splitlines()[-lines:])


# PostgreSQL refuses to run as root; when we are root, servers and pgBackRest run as the
# unprivileged `postgres` user the Debian packages create.
def db_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as e:
        raise PartError("postgres", "running as root but there is no `postgres` user") from e


def run_db(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True,
           timeout: float = 120, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command as the database OS user (postgres when we are root)."""
    u = db_user()
    kwargs: dict = {}
    if u is not None:
        kwargs = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []}
        env = {**(env or os.environ), "HOME": u.pw_dir, "USER": "postgres", "LOGNAME": "postgres"}
    return subprocess.run(
        cmd, env=env, check=check, timeout=timeout, text=True, capture_output=True,
        cwd=cwd or "/", **kwargs,
    )


def chown_db(path: Path, mode: int | None = None) -> None:
    u = db_user()
    if u is not None:
        os.chown(path, u.pw_uid, u.pw_gid)
    if mode is not None:
        os.chmod(path, mode)


def make_db_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    chown_db(path, mode)
    return path


def blocking_dir(path: Path) -> Path | None:
    """The first ancestor of `path` that the database user cannot search, if any.

    A checkout inside a 0700 directory (as `mktemp -d` makes) cannot hold cluster data.
    """
    u = db_user()
    if u is None:
        return None
    gids = set(os.getgrouplist(u.pw_name, u.pw_gid))
    for d in reversed(path.resolve().parents):
        st = d.stat()
        if st.st_uid == u.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in gids:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return d
    return None


def spawn(cmd: list[str], *, log: Path, pidfile: Path, env: dict[str, str] | None = None) -> int:
    """Start a daemon in its own session, output to `log`, pid recorded."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        p = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, close_fds=True,
        )
    pidfile.write_text(str(p.pid))
    return p.pid


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def stop_pid(pid: int, timeout: float = 15) -> None:
    """SIGTERM, wait bounded, then SIGKILL: every stop is bounded (DESIGN.md)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            if not alive(pid):
                return
            time.sleep(0.05)


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
