"""Worker commands run against a local environment of their own, and their processes watched,
so that a test can interrupt one at a known step (test_signals.py): what runs, its tools (by
their command lines under /proc), the primary's state before and after."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from infra.local.env import LocalEnv
from tests.conftest import REPO
from tests.integration.pipeline import BUCKET_CHECKSUMS

WAIT = 300.0  # bound on waiting for a step to be reached (a bound, not a measured duration)


def worker_env(env: LocalEnv, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **env.env(), "TICKSTACK_LOG_FORMAT": "json", **(extra or {})}


def cli(env: LocalEnv, *args: str, extra: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                          env=worker_env(env, extra), capture_output=True, text=True,
                          timeout=timeout)


def ok(env: LocalEnv, *args: str, extra: dict[str, str] | None = None) -> str:
    r = cli(env, *args, extra=extra)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout


class Running:
    """A worker command started in the background, its output in files (no pipe to fill)."""

    def __init__(self, env: LocalEnv, tmp: Path, *args: str,
                 extra: dict[str, str] | None = None):
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.p = subprocess.Popen([sys.executable, "-m", "workers", *args], cwd=REPO,
                                      env=worker_env(env, extra), stdout=o, stderr=e)

    def wait(self) -> tuple[int, str, str]:
        code = self.p.wait(timeout=900)
        return code, self.out.read_text(), self.err.read_text()

    def last_line(self) -> str:
        lines = self.err.read_text().strip().splitlines()
        return lines[-1] if lines else ""


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(x) for x in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for(what: str, pred, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}")
        time.sleep(0.02)
    pytest.fail(f"not reached within {WAIT:.0f} s: {what}")


def tool_running(run: Running, needle: str):
    """The worker's descendant pgBackRest whose command line holds `needle` (a tool at work;
    not a child forked but not yet exec'd, which still has the worker's own command line)."""
    return next((p for p in descendants(run.p.pid)
                 if cmdline(p).startswith("pgbackrest") and needle in cmdline(p)), None)


def pgbackrest_jobs(env: LocalEnv) -> list[str]:
    """pgBackRest processes of this environment other than its TLS server and WAL archiving."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            c = cmdline(int(d.name))
            if c.startswith("pgbackrest") and str(env.pgbr_dir) in c and \
                    not c.rstrip().endswith(" server") and "archive-" not in c:
                out.append(f"{d.name}: {c}")
    return out


def admin(env: LocalEnv) -> psycopg.Connection:
    return psycopg.connect(env.primary.dsn(), password=env.secrets["postgres_password"],
                           autocommit=True)


def state(env: LocalEnv) -> tuple[list[tuple], int, int]:
    """Per-bucket checksums, the filler's rows, and the timeline: a restored primary would be
    on a new timeline, the old one put back is on its own."""
    with admin(env) as c:
        return (c.execute(BUCKET_CHECKSUMS).fetchall(),
                c.execute("SELECT count(*) FROM public.filler").fetchone()[0],
                c.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0])


def leftovers(env: LocalEnv) -> list[str]:
    """Directories and notes beside the primary's data directory, other than the data itself."""
    return sorted(p.name for p in env.primary.data.parent.iterdir()
                  if p.name.startswith("data") and p.name != "data")


def tidy(env: LocalEnv) -> None:
    """Remove the failed restores kept for a look (they are asserted on before)."""
    for p in env.primary.data.parent.iterdir():
        if ".failed-restore-" in p.name:
            shutil.rmtree(p)


def target_now() -> str:
    time.sleep(1.1)  # a commit after the target: the forced restore archives one
    return datetime.now(UTC).isoformat()


def tool_running_pid(pid: int, needle: str):
    return next((p for p in descendants(pid) if cmdline(p).startswith(needle)), None)
