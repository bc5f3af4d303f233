"""`workers backup`: pgBackRest backups of the primary, and the health of WAL archiving.

The configuration is the file infra/configs.py renders (the same renderer the cloud uses); S3
keys, where the repository needs them (`repo1-s3-key-type=shared`, the local S3), come from the
standard AWS variables into pgBackRest's own environment variables, never into a file.
`--check` exists for the failures that break point-in-time recovery silently: an archiver that
keeps failing, or has stopped moving (pg_wal fills), and WAL missing from the archive between
the oldest backup and the newest archived segment (workers/ops/wal_archive.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import subprocess
import time
from dataclasses import dataclass, field

import psycopg

from workers.core import logs
from workers.core.errors import BadInput, Failed
from workers.core.sqlfiles import query
from workers.ops import subprocs, wal_archive

log = logs.get("backup")


class BackupError(Failed):
    pass


@dataclass(frozen=True)
class Tool:
    """How to run the database host's tools: config, stanza, and as whom."""

    config: str
    stanza: str
    os_user: str | None = None

    def _env_and_user(self) -> tuple[dict[str, str], dict]:
        env = dict(os.environ)
        if "AWS_ACCESS_KEY_ID" in env and "PGBACKREST_REPO1_S3_KEY" not in env:
            env["PGBACKREST_REPO1_S3_KEY"] = env["AWS_ACCESS_KEY_ID"]
            env["PGBACKREST_REPO1_S3_KEY_SECRET"] = env.get("AWS_SECRET_ACCESS_KEY", "")
        kw: dict = {}
        if self.os_user and os.geteuid() == 0:
            u = pwd.getpwnam(self.os_user)
            kw = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": [], "cwd": "/"}
            env.update(HOME=u.pw_dir, USER=u.pw_name, LOGNAME=u.pw_name)
        return env, kw

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return self.exec(["pgbackrest", f"--config={self.config}", f"--stanza={self.stanza}",
                          *args], timeout=timeout)

    def exec(self, cmd: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        """The tool's whole process tree is stopped and waited for when this is interrupted
        (SIGINT/SIGTERM) or times out (workers/ops/subprocs.py)."""
        try:
            env, kw = self._env_and_user()
            return subprocs.run(cmd, env=env, timeout=timeout, **kw)
        except subprocs.Timeout as e:
            raise BackupError(str(e)) from None
        except FileNotFoundError as e:
            raise BackupError(f"{cmd[0]} is not installed here ({e})") from None

    def ok(self, *args: str, timeout: float) -> str:
        r = self.run(*args, timeout=timeout)
        if r.returncode != 0:
            text = r.stderr or r.stdout
            held = lock_held(text)
            if held:
                raise BackupError(held)
            raise BackupError(f"pgbackrest {args[0]} failed (exit {r.returncode}): "
                              f"{tail(text)}")
        return r.stdout

    def info(self) -> dict:
        out = self.ok("info", "--output=json", timeout=120)
        data = json.loads(out)
        return data[0] if data else {}


_LOCK = re.compile(r"unable to acquire lock on file '([^']+)'")


def lock_held(output: str) -> str | None:
    """What to say when pgBackRest could not take its lock (error 050): which lock file, who
    holds it (the processes that have it open; the pid that took it), and what to do."""
    m = _LOCK.search(output)
    if m is None:
        return None
    path = m.group(1)
    holders = subprocs.lock_holders(path)
    owner = subprocs.lock_owner(path)
    text = f"another process holds the pgBackRest lock {path}"
    if holders:
        text += ": " + ", ".join(f"pid {pid} ({cmd[:120]})" for pid, cmd in holders)
        if owner is not None and owner not in {pid for pid, _ in holders}:
            text += (f" — workers left by pgBackRest pid {owner}, which took the lock and is "
                     "gone (an interrupted backup)")
        return text + ("; wait for it to finish, or stop it (kill "
                       + " ".join(str(pid) for pid, _ in holders) + "), then run this again")
    if owner is not None:
        text += f" (taken by pid {owner})"
    return text + "; wait for it to finish, or stop it, then run this again"


def tail(text: str, n: int = 6) -> str:
    """The last `n` lines of a tool's output, on one line (error messages stay one line)."""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


def ensure_stanza(tool: Tool) -> None:
    """stanza-create succeeds again on a matching stanza (verified with the pgBackRest of the
    version table, scripts/versions.env)."""
    tool.ok("stanza-create", timeout=300)


@dataclass
class BackupResult:
    type: str | None
    label: str | None
    size_bytes: int | None = None
    repo_bytes: int | None = None
    backups_kept: int = 0
    seconds: float = 0.0
    skipped: bool = False  # the newest full backup already holds this data

    @property
    def changed(self) -> bool:
        return not self.skipped

    def summary(self) -> str:
        if self.skipped:
            return (f"up to date: full backup {self.label} already holds this data (no new "
                    "landing objects, ticks or embeddings since)")
        return (f"{self.type} {self.label}: {(self.size_bytes or 0) / 2**20:.0f} MB database, "
                f"{(self.repo_bytes or 0) / 2**20:.1f} MB stored, {self.backups_kept} kept")

    def as_dict(self) -> dict:
        return {**vars(self), "seconds": round(self.seconds, 2)}


def backup(tool: Tool, kind: str, annotations: dict[str, str] | None = None) -> BackupResult:
    """One backup; `annotations` are stored with it in the repository (pgBackRest >= 2.41)."""
    if kind not in ("full", "diff", "incr"):
        raise BadInput(f"--type must be full, diff or incr, not {kind!r}")
    t0 = time.monotonic()
    ensure_stanza(tool)
    notes = [f"--annotation={k}={v}" for k, v in (annotations or {}).items()]
    tool.ok("backup", f"--type={kind}", *notes, timeout=6 * 3600)
    info = tool.info()
    last = (info.get("backup") or [{}])[-1]
    res = BackupResult(last.get("type"), last.get("label"),
                       (last.get("info") or {}).get("size"),
                       ((last.get("info") or {}).get("repository") or {}).get("delta"),
                       len(info.get("backup") or []), round(time.monotonic() - t0, 2))
    log.info("backup done", **res.as_dict())
    return res


def data_fingerprint(conn: psycopg.Connection) -> str:
    """What a backup holds, in 32 hex digits: landing registry, ticks, embeddings, ledger."""
    text = conn.execute(query(__package__, "data_fingerprint")).fetchone()[0]
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def full_backup_unless_current(tool: Tool, conn: psycopg.Connection, *,
                               force: bool = False) -> BackupResult:
    """A full backup, skipped when the newest one was taken of the same data (its annotation
    holds the fingerprint): a second `make up` over the same data takes none."""
    fp = data_fingerprint(conn)
    ensure_stanza(tool)
    last = next((b for b in reversed(tool.info().get("backup") or [])
                 if b.get("type") == "full"), None)
    if not force and ((last or {}).get("annotation") or {}).get("tickstack-data") == fp:
        return BackupResult("full", last["label"], skipped=True)
    return backup(tool, "full", annotations={"tickstack-data": fp})


@dataclass
class ArchiveCheck:
    healthy: bool
    problems: list[str] = field(default_factory=list)
    archiver: dict = field(default_factory=dict)
    ready_segments: int = 0
    oldest_ready_seconds: float | None = None
    repository: dict = field(default_factory=dict)
    wal: wal_archive.Result | None = None  # the archive's holes (None: not checked)

    changed = False  # a check changes nothing

    @property
    def ok(self) -> bool:
        return self.healthy

    def summary(self) -> str:
        a = self.archiver
        return (f"{'healthy' if self.healthy else 'UNHEALTHY'}: {a['archived_count']} WAL "
                f"archived, {a['failed_count']} failed, {self.ready_segments} waiting"
                + (f"; repository: {self.repository['backups']} backups"
                   if self.repository else "")
                + (f"; WAL archive: {len(self.wal.holes)} hole(s)"
                   if self.wal is not None and not self.wal.ok else ""))

    def details(self) -> list[str]:
        """What `workers backup --check` prints."""
        a = self.archiver
        out = [f"archive: {'healthy' if self.healthy else 'UNHEALTHY'} — archived "
               f"{a['archived_count']} (last {a['last_archived_wal']} at "
               f"{a['last_archived_time']}), failed {a['failed_count']}, "
               f"{self.ready_segments} waiting"]
        if self.repository:
            r = self.repository
            out.append(f"repository: {r['status']}; {r['backups']} backups; WAL "
                       f"{r['wal_min']} .. {r['wal_max']}")
        if self.wal is not None:
            w = self.wal
            out.append(f"WAL archive: {'contiguous' if w.ok else 'HOLES'} — {w.segments} "
                       "segments; needed for recovery from the oldest backup on: "
                       + ("; ".join(f"{k}: {', '.join(v)}" for k, v in w.needed.items())
                          or "nothing yet"))
        out += [f"  problem: {p}" for p in self.problems]
        return out

    def as_dict(self) -> dict:
        return {**vars(self), "wal": self.wal.as_dict() if self.wal else None}


def check(conn: psycopg.Connection, tool: Tool, *, stall_seconds: int,
          deadline_seconds: int = 75) -> ArchiveCheck:
    """Archive state from pg_stat_archiver, the waiting segments and pgBackRest: healthy only
    when nothing is failing or stuck, a fresh WAL switch reaches the repository, and the
    archive holds every segment recovery from the oldest backup on needs."""
    c = ArchiveCheck(healthy=True)
    cur = conn.execute(query(__package__, "archiver_state"))
    row = cur.fetchone()
    c.archiver = {d.name: (v.isoformat() if hasattr(v, "isoformat") else v)
                  for d, v in zip(cur.description, row, strict=True)}
    if c.archiver["failing"]:
        c.problems.append(f"WAL archiving is failing: {c.archiver['failed_count']} failures, "
                          f"last {c.archiver['last_failed_wal']} at "
                          f"{c.archiver['last_failed_time']}")
    c.ready_segments, oldest = conn.execute(query(__package__, "archive_waiting")).fetchone()
    c.oldest_ready_seconds = float(oldest) if oldest is not None else None
    if c.oldest_ready_seconds is not None and c.oldest_ready_seconds > stall_seconds:
        c.problems.append(f"WAL archiving is stalled: {c.ready_segments} segments waiting, the "
                          f"oldest for {c.oldest_ready_seconds:.0f} s (limit {stall_seconds} s)")
    # pgBackRest's own check: switches WAL and waits (bounded) until the segment is archived.
    # An unreachable repository makes pgBackRest retry for a while: bound it, and call a
    # check that does not finish in time a failed one.
    archive_timeout = max(5, min(30, deadline_seconds * 2 // 5))  # 30 of the default 75 s
    try:
        r = tool.run("check", f"--archive-timeout={archive_timeout}",
                     f"--io-timeout={min(15, archive_timeout)}", timeout=deadline_seconds)
    except BackupError as e:
        r = None
        c.problems.append(f"pgbackrest check failed: {e}")
    if r is not None and r.returncode != 0:
        c.problems.append(f"pgbackrest check failed (exit {r.returncode}): "
                          f"{tail(r.stderr or r.stdout, 3)}")
    elif r is not None:
        try:
            info = tool.info()
            arch = (info.get("archive") or [{}])[-1]
            c.repository = {"status": (info.get("status") or {}).get("message"),
                            "backups": len(info.get("backup") or []),
                            "wal_min": arch.get("min"), "wal_max": arch.get("max")}
            if not info.get("backup"):
                c.problems.append("no backup in the repository yet")
            else:
                # After the check's own WAL switch: the newest segment the primary archived.
                seg_size, newest = conn.execute(query(__package__, "wal_position")).fetchone()
                c.wal = wal_archive.check(tool, info, seg_size, newest)
                c.problems += c.wal.messages()
        except BackupError as e:
            c.problems.append(str(e))
    c.healthy = not c.problems
    (log.info if c.healthy else log.error)("archive check", healthy=c.healthy,
                                           problems=c.problems)
    return c
