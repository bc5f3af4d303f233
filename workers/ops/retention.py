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
from workers.core.sqlfiles import query

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
    actions: list[dict] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0

    @property
    def chunks(self) -> int:
        return sum(a.get("chunks", 0) for a in self.actions)

    @property
    def rows(self) -> int:
        return sum(a.get("rows", 0) for a in self.actions)

    def as_dict(self) -> dict:
        return {"job": self.job, "table": self.table, "outcome": self.outcome,
                "reason": self.reason, "chunks": self.chunks, "rows": self.rows,
                "actions": self.actions, "seconds": round(self.seconds, 3)}


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
                done = [_action_text(a, self.dry_run) for a in r.actions
                        if a.get("rows") or a.get("chunks")]
                skipped = [a["skipped"] for a in r.actions if "skipped" in a]
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
                    if "skipped" in a:
                        out.append(f"    {a['action']}: {a['skipped']}")
                        continue
                    verb = "would " if self.dry_run else ""
                    unit = f"{a.get('chunks', 0)} chunks, " if a["action"] != "delete" else ""
                    rng = (f" ({a['range'][0][:10]} .. {a['range'][1][:10]})"
                           if a.get("range") else "")
                    out.append(f"    {verb}{a['action']}: {unit}{a.get('rows', 0):,} rows older "
                               f"than {a['cutoff'][:19]}{rng}")
                    if a.get("held_back"):
                        out.append(f"    held back: {a['held_back']}")
        return out

    def as_dict(self) -> dict:
        return {server: [r.as_dict() for r in rs] for server, rs in self.servers.items()}


_VERBS = {"compress": ("would compress", "compressed"), "drop_chunks": ("would drop", "dropped"),
          "delete": ("would delete", "deleted")}


def _action_text(a: dict, dry_run: bool) -> str:
    what = _VERBS.get(a["action"], (a["action"], a["action"]))[0 if dry_run else 1]
    text = what + (f" {a['chunks']} chunk(s)," if a.get("chunks") else "") + \
        f" {a.get('rows', 0):,} rows"
    if a["action"] == "compress":
        size = a.get("bytes")
        text += " (licensed TimescaleDB" + (
            f", {size[0] / 1e6:.1f} -> {size[1] / 1e6:.1f} MB)" if size else ")")
    return text


@dataclass(frozen=True)
class Caps:
    timescaledb: bool
    licence: str | None  # "apache" | "timescale" | None

    @property
    def compression(self) -> bool:
        return self.timescaledb and self.licence == "timescale"


def capabilities(conn: psycopg.Connection) -> Caps:
    ts = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    lic = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()[0]
    return Caps(bool(ts), lic if ts else None)


def validate(conn: psycopg.Connection, targets: dict[str, tuple[str, str]], table: object,
             policy: object) -> tuple[str, dict[str, timedelta]]:
    """The job's table and its parsed intervals, or Rejected with the reason."""
    if not isinstance(table, str) or not _TABLE.match(table):
        raise Rejected(f"hypertable {table!r} is not a schema-qualified table name")
    if table not in targets:
        raise Rejected(f"{table} is not a table tickstack manages "
                       f"(managed: {', '.join(sorted(targets))})")
    if conn.execute("SELECT to_regclass(%s)", [table]).fetchone()[0] is None:
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
                ok, value = conn.execute(
                    "SELECT %s::interval BETWEEN %s::interval AND %s::interval, "
                    "%s::interval", [text, MIN_INTERVAL, MAX_INTERVAL, text]).fetchone()
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
    if landed_via == "ticks":
        q = sql.SQL(
            "SELECT min(t.b), count(*) FROM (SELECT market, symbol, {col} AS b, count(*) AS n "
            "FROM {tbl} "
            "WHERE {col} < %s GROUP BY 1, 2, 3) t LEFT JOIN landing.raw_blobs_5m r "
            "ON r.market = t.market AND r.asset = t.symbol AND r.bucket_5m = t.b "
            "WHERE r.bucket_5m IS NULL OR (r.metadata->>'row_count')::bigint < t.n")
    else:
        q = sql.SQL(
            "SELECT min(t.{col}), count(*) FROM {tbl} t LEFT JOIN landing.raw_blobs_5m r "
            "ON r.market = t.market AND r.asset = t.symbol AND r.bucket_5m = t.{col} "
            "WHERE t.{col} < %s AND r.bucket_5m IS NULL")
    schema, name = table.split(".")
    first, n = conn.execute(q.format(col=sql.Identifier(time_col),
                                     tbl=sql.Identifier(schema, name)), [cutoff]).fetchone()
    return (first if first is not None and first < cutoff else cutoff), n


def _drop_timescale(conn, table: str, cutoff: datetime, dry_run: bool) -> dict:
    chunks = conn.execute("SELECT chunk, range_start, range_end, rows FROM "
                          "ops.retention_chunks(%s, %s)", [table, cutoff]).fetchall()
    a = {"action": "drop_chunks", "cutoff": cutoff.isoformat(), "chunks": len(chunks),
         "rows": sum(c[3] for c in chunks),
         "range": [chunks[0][1].isoformat(), chunks[-1][2].isoformat()] if chunks else None}
    if chunks and not dry_run:
        with conn.transaction():
            _mark_digests(conn, table, cutoff)
            dropped = conn.execute("SELECT * FROM ops.retention_drop_chunks(%s, %s)",
                                   [table, cutoff]).fetchall()
        a["dropped"] = [d[0] for d in dropped]
    return a


def _mark_digests(conn, table: str, cutoff: datetime) -> None:
    """Ticks go: their buckets' digests are stale (call in the removing transaction)."""
    if table == TICKS:
        conn.execute(query(__package__, "mark_digests_before"), [cutoff])


def _delete_batched(conn, table: str, time_col: str, cutoff: datetime, dry_run: bool) -> dict:
    schema, name = table.split(".")
    tbl, col = sql.Identifier(schema, name), sql.Identifier(time_col)
    n, lo, hi = conn.execute(sql.SQL("SELECT count(*), min({c}), max({c}) FROM {t} "
                                     "WHERE {c} < %s").format(c=col, t=tbl), [cutoff]).fetchone()
    a = {"action": "delete", "cutoff": cutoff.isoformat(), "rows": n,
         "range": [lo.isoformat(), hi.isoformat()] if n else None}
    if n and not dry_run:
        stmt = sql.SQL("DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} "
                       "WHERE {c} < %s LIMIT %s))").format(t=tbl, c=col)
        deleted, batches = 0, 0
        while True:  # one short transaction per batch: no long locks, bounded WAL bursts
            with conn.transaction():
                _mark_digests(conn, table, cutoff)
                k = conn.execute(stmt, [cutoff, DELETE_BATCH]).rowcount
            deleted += k
            batches += 1
            if k == 0:
                break
        a.update(deleted=deleted, batches=batches)
    return a


def _compress(conn, table: str, cutoff: datetime, caps: Caps, dry_run: bool) -> dict:
    a = {"action": "compress", "cutoff": cutoff.isoformat()}
    if not caps.timescaledb:
        return {**a, "skipped": "plain PostgreSQL: nothing to compress"}
    if not caps.compression:
        return {**a, "skipped": f"compression unavailable (timescaledb.license = {caps.licence})"}
    chunks = [c for c in conn.execute(
        "SELECT chunk, range_start, range_end, rows, is_compressed FROM "
        "ops.retention_chunks(%s, %s)", [table, cutoff]).fetchall() if not c[4]]
    a.update(chunks=len(chunks), rows=sum(c[3] for c in chunks),
             range=[chunks[0][1].isoformat(), chunks[-1][2].isoformat()] if chunks else None)
    if chunks and not dry_run:
        for c in chunks:
            conn.execute("SELECT ops.retention_compress_chunk(%s, %s)", [table, c[0]])
        a["bytes"] = _compressed_bytes(conn, table)
    return a


def _compressed_bytes(conn, table: str) -> list[float] | None:
    """[before, after] compression over the table's compressed chunks: what it saved."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT sum(before_compression_total_bytes)::float8, "
                "sum(after_compression_total_bytes)::float8 "
                "FROM hypertable_compression_stats(%s)", [table]).fetchone()
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
        if caps.timescaledb and _is_hypertable(conn, table):
            a = _drop_timescale(conn, table, cutoff, dry_run)
        else:
            a = _delete_batched(conn, table, time_col, cutoff, dry_run)
        if unlanded:
            a["held_back"] = (f"{unlanded} buckets older than {wanted.isoformat()} are not "
                              f"(fully) in landing; kept from {cutoff.isoformat()}")
        res.actions.append(a)
    if "compress_after" in intervals and _is_hypertable(conn, table):
        res.actions.append(_compress(conn, table, now - intervals["compress_after"], caps,
                                     dry_run))
    elif "compress_after" in intervals:
        res.actions.append({"action": "compress", "skipped": "not a hypertable here"})
    touched = any(a.get("rows") or a.get("chunks") for a in res.actions)
    res.outcome = ("dry-run" if dry_run else "applied") if touched else "nothing-to-do"
    return res


def _is_hypertable(conn, table: str) -> bool:
    if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
        return False
    schema, name = table.split(".")
    return bool(conn.execute(
        "SELECT 1 FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = %s AND hypertable_name = %s", [schema, name]).fetchone())


def run(conn: psycopg.Connection, *, dry_run: bool = False, job: str | None = None,
        now: datetime | None = None) -> list[JobResult]:
    require_autocommit(conn, "retention")
    caps = capabilities(conn)
    now = now or conn.execute("SELECT now()").fetchone()[0]
    targets = {t: (c, v) for t, c, v in conn.execute(
        "SELECT table_name, time_column, landed_via FROM ops.retention_targets")}
    rows = conn.execute(
        "SELECT job_name, hypertable, policy FROM ops.retention_jobs WHERE enabled "
        "AND (%s::text IS NULL OR job_name = %s) ORDER BY job_name", [job, job]).fetchall()
    if job and not rows:
        raise NoSuchJob(f"no enabled retention job named {job!r}")
    run_id = uuid.uuid4()
    results = []
    for name, table, policy in rows:
        started = conn.execute("SELECT clock_timestamp()").fetchone()[0]
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
    ranges = [a["range"] for a in res.actions if a.get("range")]
    conn.execute(
        "INSERT INTO ops.retention_runs (run_id, job_name, started_at, finished_at, dry_run, "
        "outcome, action, chunks, rows, range_start, range_end, detail) "
        "VALUES (%s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s, %s)",
        [run_id, res.job, started, dry_run, res.outcome,
         ",".join(a["action"] for a in res.actions) or None, res.chunks, res.rows,
         min(r[0] for r in ranges) if ranges else None,
         max(r[1] for r in ranges) if ranges else None,
         json.dumps({"table": res.table, "reason": res.reason, "actions": res.actions,
                     "seconds": round(res.seconds, 3)})])
