"""`workers retention`: apply ops.retention_jobs, one audited outcome per job.

Job rows are data, so nothing in them reaches SQL unchecked: the table must be one that
ops.retention_targets registers (and exist); intervals must parse as PostgreSQL intervals within
[MIN_INTERVAL, MAX_INTERVAL]. Identifiers go through psycopg.sql.Identifier. A bad job is
rejected alone (audited with its reason); the others still run.

What a job does depends on what the server can do (detected, never assumed):
  * TimescaleDB: drop_after drops whole chunks older than the cutoff (drop_chunks, through an
    owner-run function); compress_after compresses chunks older than it where the licence is
    `timescale`, and reports "compression unavailable" with the Apache-only build.
  * plain PostgreSQL (the replica): drop_after deletes rows older than the cutoff in batches,
    each its own short transaction; compress_after has nothing to do.
Either way, nothing is removed that landing does not hold: the cutoff is moved back before the
oldest bucket whose ticks the landing registry does not account for.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from workers.core import logs
from workers.core.errors import BadInput
from workers.core.pg import require_autocommit
from workers.core.sqlfiles import query, template
from workers.ops.retention_actions import Action, Chunk, Compress, Delete, DropChunks, span

log = logs.get("retention")

MIN_INTERVAL = "1 day"
MAX_INTERVAL = "100 years"
DELETE_BATCH = 50_000
_TABLE = re.compile(r"^([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)$")
POLICY_KEYS = ("compress_after", "drop_after")
TICKS = "market_data.btc_ticks"


class Rejected(ValueError):
    """The job row itself is wrong; nothing was attempted."""


class NoSuchJob(BadInput, LookupError):
    """`--job NAME` names no enabled job (on one server; bad input when on none)."""


@dataclass
class JobResult:
    job: str
    table: str
    outcome: str  # applied | dry-run | nothing-to-do | rejected | failed | not-defined
    actions: list[Action] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0

    @property
    def chunks(self) -> int:
        return sum(a.touched()[0] for a in self.actions)

    @property
    def rows(self) -> int:
        return sum(a.touched()[1] for a in self.actions)

    def as_dict(self) -> dict:
        return {"job": self.job, "table": self.table, "outcome": self.outcome,
                "reason": self.reason, "chunks": self.chunks, "rows": self.rows,
                "actions": [a.as_dict() for a in self.actions],
                "seconds": round(self.seconds, 3)}


@dataclass
class RetentionReport:
    """Every job's outcome on every server of one run (`workers retention`, the main job)."""

    dry_run: bool
    servers: dict[str, list[JobResult]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems()

    @property
    def changed(self) -> bool:
        return not self.dry_run and any(r.rows or r.chunks for rs in self.servers.values()
                                        for r in rs)

    def problems(self) -> list[str]:
        return [f"{server} {r.job}: {r.outcome} — {r.reason}"
                for server, rs in self.servers.items() for r in rs
                if r.outcome in ("rejected", "failed")]

    def summary(self) -> str:
        """One line: each job's outcome and what it did, e.g. `primary btc_ticks: applied
        (compressed 1 chunk(s), 183,355 rows (licensed TimescaleDB, 35.1 -> 4.8 MB))`."""
        parts = []
        for server, rs in self.servers.items():
            for r in rs:
                done = [a.summary(self.dry_run) for a in r.actions if a.did_something]
                skipped = [a.skipped for a in r.actions
                           if isinstance(a, Compress) and a.skipped]
                parts.append(f"{server} {r.job}: {r.outcome}"
                             + (f" ({'; '.join(done)})" if done else "")
                             + (f" ({'; '.join(skipped)})" if skipped else ""))
        return "; ".join(parts) or "no enabled retention jobs"

    def details(self) -> list[str]:
        """A line per job and per action, as `workers retention` prints them."""
        out = []
        for server, rs in self.servers.items():
            for r in rs:
                if r.outcome == "not-defined":  # `--job NAME` that only another server has
                    out.append(f"retention {server}: {r.job}: not defined on this server "
                               "(no enabled job of that name)")
                    continue
                out.append(f"retention {server}: {r.job} ({r.table}): {r.outcome}"
                           + (f" — {r.reason}" if r.reason else ""))
                for a in r.actions:
                    out += a.detail(self.dry_run)
        return out

    def as_dict(self) -> dict:
        return {server: [r.as_dict() for r in rs] for server, rs in self.servers.items()}


@dataclass(frozen=True)
class Caps:
    timescaledb: bool
    licence: str | None  # "apache" | "timescale" | None

    @property
    def compression(self) -> bool:
        return self.timescaledb and self.licence == "timescale"


def capabilities(conn: psycopg.Connection) -> Caps:
    ts, lic = conn.execute(query(__package__, "retention_capabilities")).fetchone()
    return Caps(ts, lic if ts else None)


def validate(conn: psycopg.Connection, targets: dict[str, tuple[str, str]], table: object,
             policy: object) -> tuple[str, dict[str, timedelta]]:
    """The job's table and its parsed intervals, or Rejected with the reason."""
    if not isinstance(table, str) or not _TABLE.match(table):
        raise Rejected(f"hypertable {table!r} is not a schema-qualified table name")
    if table not in targets:
        raise Rejected(f"{table} is not a table tickstack manages "
                       f"(managed: {', '.join(sorted(targets))})")
    if conn.execute(query(__package__, "retention_table_exists"), [table]).fetchone()[0] is None:
        raise Rejected(f"{table} does not exist on this server")
    if not isinstance(policy, dict):
        raise Rejected("policy is not a JSON object")
    unknown = set(policy) - set(POLICY_KEYS)
    if unknown:
        raise Rejected(f"unknown policy keys {sorted(unknown)} (allowed: {list(POLICY_KEYS)})")
    if not any(k in policy for k in POLICY_KEYS):
        raise Rejected(f"policy has none of {list(POLICY_KEYS)}")
    parsed: dict[str, timedelta] = {}
    for key in POLICY_KEYS:
        if key not in policy:
            continue
        text = policy[key]
        if not isinstance(text, str):
            raise Rejected(f"{key} must be an interval string, not {text!r}")
        try:
            with conn.transaction():
                ok, value = conn.execute(query(__package__, "retention_interval"), {
                    "text": text, "lowest": MIN_INTERVAL, "highest": MAX_INTERVAL}).fetchone()
        except psycopg.DataError as e:
            raise Rejected(f"{key} {text!r} is not a PostgreSQL interval "
                           f"({e.diag.message_primary})") from None
        if not ok:
            raise Rejected(f"{key} {text!r} is outside [{MIN_INTERVAL}, {MAX_INTERVAL}]")
        parsed[key] = value
    if len(parsed) == 2 and parsed["compress_after"] >= parsed["drop_after"]:
        raise Rejected("compress_after must be shorter than drop_after")
    return table, parsed


def landed_cutoff(conn: psycopg.Connection, table: str, time_col: str, landed_via: str,
                  cutoff: datetime) -> tuple[datetime, int]:
    """The cutoff moved back before any bucket landing does not account for; and how many
    such buckets there are. Ticks must match the registry's row count per bucket."""
    via = "ticks" if landed_via == "ticks" else "buckets"
    q = template(__package__, f"retention_unlanded_{via}")
    schema, name = table.split(".")
    first, n = conn.execute(q.format(col=sql.Identifier(time_col),
                                     tbl=sql.Identifier(schema, name)), [cutoff]).fetchone()
    return (first if first is not None and first < cutoff else cutoff), n


def _chunks(conn, table: str, cutoff: datetime) -> list[Chunk]:
    return [Chunk(*c) for c in conn.execute(query(__package__, "retention_chunks"),
                                             [table, cutoff])]


def _drop_timescale(conn, table: str, cutoff: datetime, dry_run: bool) -> DropChunks:
    chunks = _chunks(conn, table, cutoff)
    a = DropChunks(cutoff=cutoff.isoformat(), chunks=len(chunks),
                   rows=sum(c.rows for c in chunks), range=span(chunks))
    if chunks and not dry_run:
        with conn.transaction():
            _mark_digests(conn, table, cutoff)
            dropped = conn.execute(query(__package__, "retention_drop_chunks"),
                                   [table, cutoff]).fetchall()
        a.dropped = [d[0] for d in dropped]
    return a


def _mark_digests(conn, table: str, cutoff: datetime) -> None:
    """Ticks go: their buckets' digests are stale (call in the removing transaction)."""
    if table == TICKS:
        conn.execute(query(__package__, "mark_digests_before"), [cutoff])


def _delete_batched(conn, table: str, time_col: str, cutoff: datetime, dry_run: bool
                    ) -> Delete:
    schema, name = table.split(".")
    tbl, col = sql.Identifier(schema, name), sql.Identifier(time_col)
    n, lo, hi = conn.execute(template(__package__, "retention_count_older").format(
        c=col, t=tbl), [cutoff]).fetchone()
    a = Delete(cutoff=cutoff.isoformat(), rows=n,
               range=[lo.isoformat(), hi.isoformat()] if n else None)
    if n and not dry_run:
        stmt = template(__package__, "retention_delete_batch").format(t=tbl, c=col)
        deleted, batches = 0, 0
        while True:  # one short transaction per batch: no long locks, bounded WAL bursts
            with conn.transaction():
                _mark_digests(conn, table, cutoff)
                k = conn.execute(stmt, [cutoff, DELETE_BATCH]).rowcount
            deleted += k
            batches += 1
            if k == 0:
                break
        a.deleted, a.batches = deleted, batches
    return a


def _compress(conn, table: str, cutoff: datetime, caps: Caps, dry_run: bool) -> Compress:
    at = cutoff.isoformat()
    if not caps.timescaledb:
        return Compress(cutoff=at, skipped="plain PostgreSQL: nothing to compress")
    if not caps.compression:
        return Compress(cutoff=at, skipped="compression unavailable (timescaledb.license = "
                                           f"{caps.licence})")
    chunks = [c for c in _chunks(conn, table, cutoff) if not c.is_compressed]
    a = Compress(cutoff=at, chunks=len(chunks), rows=sum(c.rows for c in chunks),
                 range=span(chunks))
    if chunks and not dry_run:
        for c in chunks:
            conn.execute(query(__package__, "retention_compress_chunk"), [table, c.chunk])
        a.bytes = _compressed_bytes(conn, table)
    return a


def _compressed_bytes(conn, table: str) -> list[float] | None:
    """[before, after] compression over the table's compressed chunks: what it saved."""
    try:
        with conn.transaction():
            row = conn.execute(query(__package__, "retention_compression_stats"),
                               [table]).fetchone()
    except psycopg.Error:  # the statistics are a report, never a reason to fail the job
        return None
    return [row[0], row[1]] if row and row[0] and row[1] else None


def run_job(conn, caps: Caps, targets, name: str, table: object, policy: object, *,
            now: datetime, dry_run: bool) -> JobResult:
    res = JobResult(name, str(table), "nothing-to-do")
    table, intervals = validate(conn, targets, table, policy)
    time_col, landed_via = targets[table]
    if "drop_after" in intervals:
        wanted = now - intervals["drop_after"]
        cutoff, unlanded = landed_cutoff(conn, table, time_col, landed_via, wanted)
        if _is_hypertable(conn, caps, table):
            a = _drop_timescale(conn, table, cutoff, dry_run)
        else:
            a = _delete_batched(conn, table, time_col, cutoff, dry_run)
        if unlanded:
            a.held_back = (f"{unlanded} buckets older than {wanted.isoformat()} are not "
                              f"(fully) in landing; kept from {cutoff.isoformat()}")
        res.actions.append(a)
    if "compress_after" in intervals and _is_hypertable(conn, caps, table):
        res.actions.append(_compress(conn, table, now - intervals["compress_after"], caps,
                                     dry_run))
    elif "compress_after" in intervals:
        res.actions.append(Compress(skipped="not a hypertable here"))
    touched = any(a.did_something for a in res.actions)
    res.outcome = ("dry-run" if dry_run else "applied") if touched else "nothing-to-do"
    return res


def _is_hypertable(conn, caps: Caps, table: str) -> bool:
    if not caps.timescaledb:
        return False
    return bool(conn.execute(query(__package__, "retention_is_hypertable"),
                             table.split(".")).fetchone())


def run(conn: psycopg.Connection, *, dry_run: bool = False, job: str | None = None,
        now: datetime | None = None) -> list[JobResult]:
    require_autocommit(conn, "retention")
    caps = capabilities(conn)
    now = now or conn.execute(query(__package__, "retention_now")).fetchone()[0]
    targets = {t: (c, v) for t, c, v in conn.execute(query(__package__, "retention_targets"))}
    rows = conn.execute(query(__package__, "retention_jobs"), {"job": job}).fetchall()
    if job and not rows:
        raise NoSuchJob(f"no enabled retention job named {job!r}")
    run_id = uuid.uuid4()
    results = []
    for name, table, policy in rows:
        started = conn.execute(query(__package__, "retention_clock")).fetchone()[0]
        t0 = time.monotonic()
        try:
            res = run_job(conn, caps, targets, name, table, policy, now=now, dry_run=dry_run)
        except Rejected as e:
            res = JobResult(name, str(table), "rejected", reason=str(e))
        except psycopg.Error as e:
            res = JobResult(name, str(table), "failed",
                            reason=f"{type(e).__name__}: {e.diag.message_primary or e}")
        res.seconds = time.monotonic() - t0
        _audit(conn, run_id, started, dry_run, res)
        getattr(log, "warning" if res.outcome in ("rejected", "failed") else "info")(
            "retention job", **{k: v for k, v in res.as_dict().items() if k != "actions"})
        results.append(res)
    return results


def _audit(conn, run_id, started, dry_run: bool, res: JobResult) -> None:
    ranges = [r for a in res.actions if (r := getattr(a, "range", None))]
    conn.execute(
        query(__package__, "retention_audit"),
        [run_id, res.job, started, dry_run, res.outcome,
         ",".join(a.kind for a in res.actions) or None, res.chunks, res.rows,
         min(r[0] for r in ranges) if ranges else None,
         max(r[1] for r in ranges) if ranges else None,
         json.dumps({"table": res.table, "reason": res.reason,
                    "actions": [a.as_dict() for a in res.actions],
                     "seconds": round(res.seconds, 3)})])
