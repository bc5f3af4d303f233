"""What the benchmarks share: a throwaway local environment, fresh migrated databases, the
resident memory of a process over time, and where each bench writes its figures (a small JSON
per bench, `bench/all.py` runs them all)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infra.local.env import LocalEnv  # noqa: E402
from infra.local.s3 import s3_client  # noqa: E402
from workers.db import migrate  # noqa: E402


@contextlib.contextmanager
def throwaway_env(tuning=None) -> Iterator[LocalEnv]:
    """Own clusters and S3 under /tmp (never the `make up` environment), removed afterwards.
    `tuning`: the primary's settings (infra.configs.PgTuning), else the local defaults."""
    from workers.core import logs

    logs.configure("console", "warning")
    state = Path(tempfile.mkdtemp(prefix="tickstack-bench-", dir="/tmp"))
    os.chmod(state, 0o755)  # the postgres user must reach the cluster directories
    env = LocalEnv(state, tuning=tuning)
    try:
        print(f"starting a throwaway environment in {state}")
        env.up()
        yield env
    finally:
        env.down(save_s3=False)
        shutil.rmtree(state, ignore_errors=True)


def fresh_db(env: LocalEnv, name: str) -> str:
    """A new migrated database on the primary; returns its name."""
    env.primary.psql(f'CREATE DATABASE "{name}"')
    migrate.run(env.primary.dsn(name), password=env.secrets["postgres_password"],
                logins=env.worker_logins())
    return name


def landing_bucket(env: LocalEnv, bucket: str) -> None:
    s3 = s3_client(env.moto.endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def worker_env(env: LocalEnv, db: str, bucket: str) -> dict[str, str]:
    """Environment for `python -m workers …` against one bench database and landing bucket."""
    return {**os.environ, **env.env(database=db, landing_bucket=bucket, replica=False),
            "TICKSTACK_LOG_FORMAT": "json"}


def workers_cli(env_vars: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO, env=env_vars,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"workers {' '.join(args)} failed ({r.returncode}):\n"
                         f"{r.stdout}\n{r.stderr[-3000:]}")
    return r


def replica_db(env: LocalEnv, name: str) -> str:
    """A migrated database of the same name on the replica cluster (the dual-write's target)."""
    env.replica.psql(f'CREATE DATABASE "{name}"')
    migrate.run(env.replica.dsn(name), password=env.secrets["postgres_password"],
                logins=env.worker_logins())
    return name


def settle(env: LocalEnv) -> None:
    """Checkpoint and let the WAL archiver catch up, so no run pays for the previous one's
    WAL (archive-push compresses and uploads every segment on these 2 cores)."""
    env.primary.psql("CHECKPOINT")
    seg = env.primary.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    env.primary.psql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = env.primary.psql("SELECT coalesce(last_archived_wal >= %s, false) "
                                "FROM pg_stat_archiver".replace("%s", f"'{seg}'"))
        if done == "t":
            return
        time.sleep(0.5)
    raise SystemExit("WAL archiving did not catch up within 10 minutes")


class Watch:
    """VmRSS and VmHWM of a running process, sampled every `every` seconds (from /proc: the
    process itself, not the fork that started it)."""

    def __init__(self, pid: int, every: float = 0.25):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []  # (seconds since start, RSS bytes)
        self.peak = 0  # VmHWM, bytes
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    st = f.read()
                rss = int(st.split("VmRSS:")[1].split()[0]) * 1024
                self.peak = max(self.peak, int(st.split("VmHWM:")[1].split()[0]) * 1024)
                self.samples.append((time.monotonic() - self.t0, rss))
            except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
                pass
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _proc_cpu() -> dict[int, tuple[int, float, str]]:
    """{pid: (parent pid, CPU seconds of the process and of the children it reaped, title)}."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # utime, stime, cutime, cstime: a backend that exited was reaped by the postmaster
        # and lives on in its cutime/cstime, so a tree's sum stays whole as backends come and go.
        out[int(name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tick, title)
    return out


def _pg_role(pid: int, root: int, title: str) -> str:
    """What a process of a cluster's tree is, for the CPU budget."""
    if pid == root:  # its own work and every child it reaped: autovacuum workers, short backends
        return "exited (autovacuum workers, short sessions)"
    if "autovacuum" in title:
        return "autovacuum"
    if "archiver" in title or "pgbackrest" in title:
        return "WAL archiving"
    if title.startswith("postgres: ") and any(w in title for w in (
            "writer", "checkpointer", "walwriter", "logical replication", "TimescaleDB")):
        return "background"
    return "sessions"


def _roots(env: LocalEnv) -> dict[str, int]:
    def pid_of(path: Path) -> int | None:
        try:
            return int(path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    roots = {"primary": pid_of(env.primary.data / "postmaster.pid"),
             "replica": pid_of(env.replica.data / "postmaster.pid"),
             "s3": env.moto.pid(), "tls": env.stunnel.pid()}
    return {part: pid for part, pid in roots.items() if pid}


def _by_tree(env: LocalEnv) -> dict[int, tuple[str, str, float, int]]:
    """{pid: (part, kind, CPU seconds, parent pid)} of every process in the environment's
    trees."""
    roots = _roots(env)
    by_pid = {pid: part for part, pid in roots.items()}
    procs = _proc_cpu()
    out = {}
    for pid, (_, cpu, title) in procs.items():
        p, seen = pid, 0
        while p in procs and p not in by_pid and seen < 64:
            p, seen = procs[p][0], seen + 1
        if p in by_pid:
            part = by_pid[p]
            kind = _pg_role(pid, p, title) if part in ("primary", "replica") else part
            out[pid] = (part, kind, cpu, procs[pid][0])
    return out


def cpu_by_part(env: LocalEnv) -> dict[str, float]:
    """CPU seconds used so far by each part of a local environment: each PostgreSQL cluster
    (postmaster, backends, autovacuum, and what they ran: archive-push), the S3 server, the
    TLS terminator. Take it before and after a phase (`cpu_delta`); the benchmark's own
    children are in resource.getrusage(RUSAGE_CHILDREN)."""
    out = dict.fromkeys(_roots(env), 0.0)
    for part, _, cpu, _ in _by_tree(env).values():
        out[part] += cpu
    return out


class CpuKinds:
    """The clusters' CPU during a phase by kind of process (sessions, autovacuum, WAL
    archiving, background), sampled every `every` seconds: a process that ends is counted up
    to its last sample, and what its parent reaped beyond that goes to the "exited" kind, so
    the kinds add up to the clusters' exact total."""

    def __init__(self, env: LocalEnv, every: float = 0.5):
        self.env, self.every = env, every
        self.first = _by_tree(env)
        self.last = dict(self.first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.last.update(_by_tree(self.env))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        end = _by_tree(self.env)
        self.last.update(end)
        out: dict[str, float] = {}
        for pid, (part, kind, cpu, ppid) in self.last.items():
            if part not in ("primary", "replica"):
                continue
            key = f"{part}: {kind}"
            out[key] = out.get(key, 0.0) + cpu - (self.first[pid][2] if pid in self.first else 0)
            if pid not in end and ppid in self.last:
                # It ended during the phase, and its parent's reaped time counts all of it
                # again: take that back from the parent's kind.
                parent = f"{part}: {self.last[ppid][1]}"
                out[parent] = out.get(parent, 0.0) - cpu
        return out


def children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}


def out_dir() -> Path:
    """Where benches write their figures: $TICKSTACK_BENCH_OUT, else .tickstack/bench/."""
    d = Path(os.environ.get("TICKSTACK_BENCH_OUT") or REPO / ".tickstack" / "bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def save(bench: str, figures: dict) -> Path:
    """`{"bench": name, "at": ..., "machine": ..., **figures}` as <out>/<name>.json."""
    p = out_dir() / f"{bench}.json"
    doc = {"bench": bench, "at": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                       "python": platform.python_version()}, **figures}
    p.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"figures: {p}")
    return p
