"""What each command does, given a Context: the shared layer the CLI and `workers up` call.

Every operation returns a typed result with `summary()` (one paragraph: the CLI prints it,
`workers up` tabulates it), `changed`, `ok`, and `as_dict()` for `--json`; some add
`details()`, the extra lines the CLI prints. Errors are raised (workers.core.errors, psycopg,
botocore) and mapped to exit codes once, by the face.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from workers.app.context import Context
from workers.app.landing_checks import beside
from workers.app.results import Each, Message, Shown
from workers.core.errors import BadInput

__all__ = ["Shown"]  # the CLI wraps results it prints its own way


# --- database schema -----------------------------------------------------------------------

def migrate(ctx: Context, *, status_only: bool = False, dsn: str | None = None) -> Each:
    """Migrations on the primary, then the replica (or only on `dsn`)."""
    from workers.db import migrate as migrations

    targets = [("server", dsn)] if dsn else ctx.settings.servers()
    logins = migrations.load_logins(ctx.settings.worker_logins_file)
    out = Each()
    for name, target in targets:
        try:
            out.results.append(migrations.run(target, status_only=status_only, logins=logins,
                                              server=name))
        except migrations.MigrationError as e:
            raise migrations.MigrationError(str(e), where=name) from None
        except Exception as e:  # connection errors and the like: say which server
            raise migrations.MigrationError(f"{type(e).__name__}: {e}", where=name) from None
    return out


# --- ingest --------------------------------------------------------------------------------

@dataclass
class IngestRun:
    """Files (or landing prefixes) ingested in one run, and the replica's dual-write."""

    files: list = field(default_factory=list)  # workers.db.ingest.Summary each
    replica: dict | None = None  # the writer's counters (None: no replica)

    @property
    def changed(self) -> bool:
        return any(f.changed for f in self.files)

    @property
    def ok(self) -> bool:
        return True

    def total(self):
        from workers.db.summary import Summary

        t = Summary(source=f"{len(self.files)} file(s)")
        for f in self.files:
            t.add(f)
        return t

    def summary(self) -> str:
        t = self.total()
        text = (f"{len(self.files)} file(s): {t.rows_text()}; database: {t.ticks_inserted:,} "
                f"new ticks; {t.buckets_landed} buckets landed, {t.buckets_unchanged} already "
                "in landing unchanged")
        if t.files_skipped:
            text += (f"; {t.files_skipped} file(s) unchanged since loaded (same checksum, same "
                     "registry): skipped")
        if self.replica is not None:
            text += "; replica dual-write batches: " + (", ".join(
                f"{v} {k}" for k, v in sorted(self.replica.items())) or "none needed")
        return text

    def as_dict(self) -> dict:
        d = self.total().as_dict()
        d.update(files=len(self.files), replica=self.replica)
        return d

    def replica_note(self) -> list[str]:
        """The dual-write's counters, for stderr, when it wrote or missed anything."""
        if self.replica is None or not (self.replica.get("written") or len(self.replica) > 1):
            return []
        return ["replica (best effort): " + ", ".join(
            f"{k} {v}" for k, v in sorted(self.replica.items()))]

    def shown_after_files(self, json_out: bool) -> Shown:
        """`workers ingest` showed each file as it finished: what is left is the replica's
        counters (stderr, not with --json)."""
        return Shown(self, text=lambda r: [], json=lambda r: None,
                     err=lambda r: [] if json_out else r.replica_note())


def ingest(ctx: Context, sources: list[str], *, symbol: str | None = None,
           market: str | None = None, since_us: int | None = None, until_us: int | None = None,
           progress: Callable[[str], Callable] | None = None,
           on_file: Callable | None = None, force: bool = False) -> IngestRun:
    """Dump files (landed, loaded, dual-written to the replica) and s3:// landing prefixes
    (replayed). `progress(source)` gives a per-source progress callback; `on_file(summary)`
    sees each source's summary as soon as it is done. Files loaded before whose buckets are
    unchanged are skipped unless `force`."""
    from workers.core.markets import check_market, check_symbol

    if symbol is not None:  # checked before anything is written under it
        check_symbol(symbol.upper())
    if market is not None:
        check_market(market)
    s = ctx.settings
    prefix = f"s3://{s.landing_bucket}/"
    for src in sources:
        if src.startswith("s3://") and not src.startswith(prefix):
            raise BadInput(f"{src} is not in the landing bucket {s.landing_bucket}")
    run = IngestRun()
    writer = ctx.replica_writer()  # best effort; None without a replica
    try:
        with ctx.connect("ingest") as conn:
            for src in sources:
                update = progress(src) if progress else None
                if src.startswith("s3://"):
                    r = _pipeline().ingest_landing(conn, ctx.landing, src.removeprefix(prefix),
                                                   since_us=since_us, until_us=until_us,
                                                   progress=update)
                else:
                    r = _ingest_file(ctx, conn, src, symbol=symbol, market=market,
                                     progress=update, replica=writer, force=force)
                run.files.append(r)
                if on_file:
                    on_file(r)
    finally:
        if writer is not None:
            writer.close()
            run.replica = dict(writer.stats)
    return run


def _pipeline():
    """The load path (pyarrow, numpy), imported when a source needs it — a rerun whose files
    are all unchanged never loads it — with Arrow's allocator set before its first use."""
    from workers.core.memory import limit_allocator_retention
    from workers.db import ingest as pipeline

    limit_allocator_retention()
    return pipeline


def _ingest_file(ctx: Context, conn, src: str, *, symbol: str | None, market: str | None,
                 progress, replica, force: bool):
    """One dump file: skipped when loaded before and unchanged (workers/db/file_loads.py),
    else through the pipeline (opened once: its SHA-256 is computed once)."""
    import time

    from workers.db import file_loads
    from workers.sources.binance_files import Limits, open_trade_file

    t0 = time.monotonic()
    g = ctx.settings.ingest
    tf = open_trade_file(src, symbol, market, Limits.of(g))
    done = None if force else file_loads.skipped(conn, ctx.landing, tf, src, t0)
    if done is not None:
        return done
    return _pipeline().ingest_file(
        conn, ctx.landing, src, symbol=symbol, market=market, progress=progress,
        block_bytes=g.block_bytes, flush_rows=g.flush_rows, replica=replica,
        max_bucket_rows=g.max_bucket_rows, limits=Limits.of(g), opened=tf, started=t0,
        force=True)  # the skip was checked just above


# --- replica, signals ----------------------------------------------------------------------

def timed(name: str, result) -> Shown:
    """A result printed as `name: summary; seconds s` (embed, backup)."""
    return Shown(result, text=lambda r: [f"{name}: {r.summary()}; {r.seconds:.1f} s"])


def replicate_command(ctx: Context, *, check_only: bool = False, since: str | None = None
                      ) -> Shown:
    """`workers replicate`: no replica configured is a usage error before any work; a
    `--check` never hangs on a server that stopped answering (a whole-command deadline)."""
    from workers.core import deadline

    ctx.dsn("admin", "replica")
    if check_only:
        deadline.arm("replicate --check", ctx.settings.replica.check_seconds,
                     "TICKSTACK_REPLICATE_CHECK_SECONDS")
    r = replicate(ctx, check_only=check_only, since=parse_time(since))
    return Shown(r, text=lambda r: [f"replicate: {r.summary()} ({r.seconds:.1f} s)",
                                    *(f"  {line}" for line in r.details())])


def replicate(ctx: Context, *, check_only: bool = False, since: datetime | None = None,
              audit_landing: bool = True):
    """Catch the replica up (or only compare); `audit_landing`: and say whether landing still
    holds every registered object (not ok when it does not)."""
    from workers.replica import catchup
    from workers.replica.writer import delivery_bound

    r = ctx.settings.replica
    settle = delivery_bound(r.timeout_seconds, r.queue)
    with ctx.connect("ingest") as primary, ctx.connect("replicate", "replica") as replica:
        r = catchup.run(primary, replica, ctx.landing, check_only=check_only, since=since,
                        settle=settle)
        return beside(ctx, r, primary) if audit_landing else r


def repair(ctx: Context, *, check_only: bool = False, since: datetime | None = None):
    """The primary's buckets that fall short of landing, re-loaded as the ingest login."""
    from workers.ops import repair as primary_repair

    with ctx.connect("ingest") as conn:
        return primary_repair.run(conn, ctx.landing, check_only=check_only, since=since)


def embed(ctx: Context, *, symbol: str | None = None, market: str | None = None):
    from workers.signals import embed as embedding

    with ctx.connect("embed") as conn:
        return embedding.run(conn, symbol=symbol, market=market,
                             index_min_rows=ctx.settings.vector_index_min_rows)


def similar(ctx: Context, *, symbol: str, at: datetime | None, k: int = 10,
            exclude_minutes: int = 60, probes: int | None = None, labelled: bool = False,
            market: str = "spot"):
    """`at` None: the newest embedded window (`labelled`: the newest whose next hour is known,
    so what followed it can be shown)."""
    from datetime import timedelta

    from workers.signals import similar as search

    search.check_options(k=k, probes=probes, exclude_minutes=exclude_minutes)
    with ctx.connect("reader") as conn:
        if at is None:
            at = search.latest_window(conn, symbol, labelled=labelled, market=market) + \
                timedelta(seconds=1)
        return search.query(conn, symbol=symbol, market=market, at=at, k=k,
                            exclude_minutes=exclude_minutes, probes=probes)


# --- operations on the stored data ---------------------------------------------------------

def retention(ctx: Context, *, dry_run: bool = False, job: str | None = None):
    """Every enabled job on the primary, then on the replica when there is one. `job` may be
    defined on one server only (jobs are rows of each server); bad input only when none has
    it."""
    from workers.ops import retention as jobs

    report = jobs.RetentionReport(dry_run)
    lacking = []
    for name, dsn in ctx.settings.servers("retention"):
        with ctx.connect(dsn=dsn) as conn:
            try:
                report.servers[name] = jobs.run(conn, dry_run=dry_run, job=job)
            except jobs.NoSuchJob:
                lacking.append(name)
                report.servers[name] = [jobs.JobResult(job, "", "not-defined")]
    if lacking and len(lacking) == len(report.servers):
        raise jobs.NoSuchJob(f"no enabled retention job named {job!r} on any server "
                             f"({', '.join(lacking)})")
    return report


def backup(ctx: Context, kind: str = "full"):
    from workers.ops import backup as backups

    return backups.backup(ctx.pgbackrest(), kind)


def full_backup_unless_current(ctx: Context, *, force: bool = False):
    from workers.ops import backup as backups

    tool = ctx.pgbackrest()
    with ctx.connect("admin") as conn:
        return backups.full_backup_unless_current(tool, conn, force=force)


def stanza_create(ctx: Context) -> Message:
    """The stanza if missing, then `pgbackrest check`: WAL archiving reaches the repository."""
    from workers.ops import backup as backups

    tool = ctx.pgbackrest()
    backups.ensure_stanza(tool)
    tool.ok("check", "--archive-timeout=60", timeout=300)
    return Message(f"backup: stanza {tool.stanza} exists and WAL archiving reaches the "
                   "repository")


def archive_check(ctx: Context, *, audit_landing: bool = True):
    """WAL archiving and the repository; `audit_landing`: and landing (a backup restores the
    database, and the replay after it reads landing: "healthy" covers both)."""
    from workers.ops import backup as backups

    tool = ctx.pgbackrest()
    with ctx.connect("backup") as conn:
        b = ctx.settings.backup
        r = backups.check(conn, tool, stall_seconds=b.archive_stall_seconds,
                          deadline_seconds=b.archive_check_seconds)
        # The backup login reads the registry for it (sql/024), nothing else of the data.
        return beside(ctx, r, conn) if audit_landing else r


def restore(ctx: Context, target: datetime, *, force: bool = False, skip_pitr: bool = False,
            timeline: str = "latest", no_replay: bool = False):
    """SIGINT/SIGTERM: during the point-in-time restore the old primary is put back; after
    it, the restored primary stays and the message says how to finish the replay."""
    from workers.core import crashpoint, interrupts
    from workers.ops import restore as rebuild

    if timeline not in ("latest", "current"):
        raise BadInput("--timeline must be latest or current")
    crashpoint.configure(ctx.settings.crash_at)
    report = rebuild.RestoreReport(target.isoformat())
    admin = ctx.dsn("admin")
    if not skip_pitr:
        b = ctx.settings.backup
        rebuild.pitr(ctx.pgbackrest(on_database_host=True), b.pg_bindir, target,
                     force=force, admin_dsn=admin, report=report, timeline=timeline,
                     config_file=b.pg_config_file)
    try:
        return _after_pitr(ctx, report, target, no_replay)
    except KeyboardInterrupt:
        raise interrupts.Interrupted(
            f"interrupted by {interrupts.last_signal()} during '{report.current}': the primary "
            f"is restored{'' if skip_pitr else ' to the target'} and running; `workers restore "
            f"--target-time {target.isoformat()} --skip-pitr` finishes the landing replay"
        ) from None


def _after_pitr(ctx: Context, report, target: datetime, no_replay: bool):
    from workers.db.migrate import discover
    from workers.ops import restore as rebuild

    with ctx.connect("admin") as conn:
        report.timed("verify extensions and migration ledger",
                     lambda: rebuild.verify(conn, [(m.name, m.sha256) for m in discover()]))
        report.newest_tick_before_replay = rebuild.newest_tick(conn)
    if no_replay:
        report.newest_tick_after = report.newest_tick_before_replay
        return report
    with ctx.connect("ingest") as conn:
        def replay() -> str:
            report.replayed_objects, report.replayed_rows = rebuild.replay_gap(
                conn, ctx.landing, target)
            return f"{report.replayed_objects} landing objects, {report.replayed_rows:,} rows"

        report.timed("landing replay after the target", replay)
        report.newest_tick_after = rebuild.newest_tick(conn)
        # Rebuilt from the backup and landing: does landing still hold what the restored
        # registry vouches for? (exit 1 when not: the next rebuild could not replay it)
        return beside(ctx, report, conn)


def parse_time_us(value: str | None) -> int | None:
    """`parse_time` in µs since the epoch."""
    from workers.core.ticks import to_us

    t = parse_time(value)
    return to_us(t) if t else None


def parse_time(value: str | None) -> datetime | None:
    """An ISO timestamp option (UTC when it names no zone); BadInput when it is not one."""
    if not value:
        return None
    from workers.core.ticks import parse_iso, to_dt

    try:
        return to_dt(parse_iso(value))
    except (ValueError, OverflowError) as e:  # not a timestamp; outside years 1..9999 in UTC
        text = str(e)
        raise BadInput(text if repr(value) in text else f"{value!r}: {text}") from None
