"""`python -m workers <command>`: the worker entry point (one image, one command per workload).

Thin: each command parses its options, builds a Context, calls its operation
(workers/app/operations.py and its neighbours) and hands the result to the one output function
(workers/app/output.py: text or --json, the exit code from the result). Errors are mapped to
exit codes in one place (`command`, workers.core.errors.describe): 0 done; 1 failed (the message
says what and where); 2 bad usage or bad input; 130 interrupted (SIGINT or SIGTERM,
workers/core/interrupts.py: the command's cleanup ran — child processes stopped, a restore's old
primary put back).
"""

from __future__ import annotations

import functools

import typer

from workers.app.output import emit, show
from workers.core import interrupts
from workers.core.errors import describe
from workers.core.markets import choices, choices_help

# Imports of what a command needs happen when it runs: `--help` loads typer and rich only
# (tests/unit/test_cli_start.py).

app = typer.Typer(
    name="workers",
    help=(
        "tickstack workers. Settings come from TICKSTACK_* environment variables "
        "(`python -m infra.local env` prints them for the local environment)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


MARKET = typer.Option(None, "--market", help=f"{choices_help()}. Default: from the archive "
                      "path / stream host; never from the symbol.")


def _context(command: str):
    from workers.app.context import Context
    from workers.core import logs
    from workers.core.settings import Settings

    s = Settings()
    logs.configure(s.log_format, s.log_level)
    return Context(s, command)


def _usage(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(2)


def command(fn):
    """Register a command whose errors become one line on stderr and an exit code."""
    name = fn.__name__.rstrip("_")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            typer.echo(f"{name}: interrupted by {interrupts.last_signal()}", err=True)
            raise typer.Exit(interrupts.EXIT_INTERRUPTED) from None
        except Exception as e:
            code, reason = describe(e)
            where = getattr(e, "where", None)
            typer.echo(f"{name}{' ' + where if where else ''}: {reason}", err=True)
            raise typer.Exit(code) from None

    return app.command(name=name)(wrapper)


@command
def migrate(
    status: bool = typer.Option(False, "--status", help="List applied and pending files only."),
    dsn: str | None = typer.Option(
        None, "--dsn", help="Migrate only this server (default: the primary, then the replica "
        "when TICKSTACK_REPLICA_DSN is set)."),
) -> None:
    """Apply sql/ migrations in order (checksummed, under an advisory lock), on every server."""
    from workers.app import operations

    emit(operations.migrate(_context("migrate"), status_only=status, dsn=dsn))


@command
def ingest(
    paths: list[str] = typer.Argument(
        None, help="Binance dump files (.csv/.zip, a .CHECKSUM beside a zip is verified) or "
        f"landing prefixes s3://<landing bucket>/raw/<market>/<SYMBOL>/… (market: {choices()}); "
        "a prefix that selects no landing object is bad input (exit 2)."),
    symbol: str | None = typer.Option(None, "--symbol", help="Symbol when the file name "
                                         "does not say (BTCUSDT-trades-….zip does)."),
    market: str | None = MARKET,
    from_landing: bool = typer.Option(False, "--from-landing",
                                      help="Replay every landing object (with --since/--until)."),
    since: str | None = typer.Option(None, "--since", help="Replay from (ISO timestamp)."),
    until: str | None = typer.Option(None, "--until", help="Replay until (exclusive)."),
    force: bool = typer.Option(False, "--force", help="Load files even when an earlier load "
                               "of the same file completed and nothing it covered changed."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Ingest Binance trade dumps, or replay landing objects: landing first, then the primary.

    Bad rows are quarantined (line, reason) to quarantine/… in the landing bucket; a file that is
    not a trade file at all fails with exit 2 and nothing of it is written. A file loaded before
    (same SHA-256) whose buckets' registry rows are unchanged since is skipped unread. The
    summary counts every row read once: inserted, already stored, duplicate within the input,
    or quarantined (by reason).
    """
    from workers.app import operations
    from workers.app.progress import file_progress

    ctx = _context("ingest")
    if not paths and not from_landing:
        _usage("ingest: give files or s3:// prefixes, or --from-landing")
    since_us, until_us = operations.parse_time_us(since), operations.parse_time_us(until)
    sources = list(paths or []) + ([f"s3://{ctx.settings.landing_bucket}/raw/"]
                                   if from_landing else [])
    run = operations.ingest(ctx, sources, symbol=symbol, market=market, since_us=since_us,
                            until_us=until_us, progress=file_progress,
                            on_file=lambda r: show(r, json_out), force=force)
    emit(run.shown_after_files(json_out), json_out)


@command
def fetch(
    symbol: str = typer.Option(..., "--symbol", help="BTCUSDT; on COIN-M BTCUSD_PERP."),
    market: str = typer.Option("spot", "--market", help=f"{choices_help()}."),
    kind: str = typer.Option("trades", "--kind", help="trades | aggTrades"),
    since: str = typer.Option(..., "--since", help="First day: YYYY-MM-DD, or YYYY-MM."),
    until: str | None = typer.Option(None, "--until", help="Last day, inclusive (YYYY-MM-DD or "
                                     "YYYY-MM). Default: yesterday, UTC."),
    ingest: bool = typer.Option(False, "--ingest", help="Hand each file, once verified, to "
                                "the `workers ingest` pipeline while the others download."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files; download nothing."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Files the archive lacks "
                                       "(404) do not fail the run."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash cached files first."),
    allow_redirect_host: list[str] = typer.Option(
        [], "--allow-redirect-host", metavar="HOST", help="Follow the archive's redirects to "
        "this host too (repeatable; also TICKSTACK_ARCHIVE_REDIRECT_HOSTS). Redirects to other "
        "hosts fail the file; each redirect followed is logged."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Binance public archive -> verified local cache (TICKSTACK_ARCHIVE_CACHE_DIR).

    Monthly files for whole months, daily files for the rest, resumed (HTTP Range)
    and verified against their .CHECKSUM; verified files are not fetched again.

    Each file is bounded (settings TICKSTACK_ARCHIVE_…): never read past its
    announced size, or MAX_FILE_BYTES; done within DEADLINE_FLOOR_SECONDS +
    size / MIN_BYTES_PER_SECOND; at most MAX_RECEIVED_RATIO x its size received
    in all. A file that fails is named, with its URL; the others go on.

    Exit 0: every file verified (and ingested); 1: a file failed, is missing or
    was refused by ingest (listed at the end; the others go on); 2: bad options,
    or an unknown symbol.
    """
    from workers.app import fetching
    from workers.sources.binance_archive import Request

    ctx = _context("fetch")
    req = Request.parse(symbol, market, kind, since, until)
    emit(fetching.command(ctx, req, ingest=ingest, dry_run_only=dry_run, verify=verify,
                          allow_missing=allow_missing, redirect_hosts=tuple(allow_redirect_host),
                          json_out=json_out, on_file=show), json_out)


@command
def stream(
    url: str = typer.Option(None, "--url", help="Binance websocket URL (wss://…), raw "
                            "(/ws/btcusdt@trade) or combined (/stream?streams=btcusdt@trade)."),
    symbol: str = typer.Option("BTCUSDT", "--symbol"),
    market: str | None = MARKET,
    gaps: bool = typer.Option(False, "--gaps", help="Only re-check and list the recorded "
                              "trade-id gaps (filled only once every id is present); no "
                              "connection."),
    json_out: bool = typer.Option(False, "--json", help="With --gaps: print JSON."),
) -> None:
    """Consume a live trade stream (reconnects, detects gaps, keeps late trades).

    Landing first, then the primary (ticks + offset in one transaction), then the replica (best
    effort). SIGTERM: the batch in flight is committed, exit 0. Health and metrics on
    TICKSTACK_HEALTH_PORT: /healthz, /readyz, /metrics.
    """
    from workers.app import streaming

    ctx = _context("stream")
    if gaps:
        emit(streaming.gaps(ctx, symbol.upper(), market), json_out)
        return
    if not url:
        _usage("stream: --url is required (or --gaps)")
    if not url.startswith(("ws://", "wss://")):
        _usage(f"stream: --url must be a ws:// or wss:// URL, not {url!r}")
    emit(streaming.stream(ctx, url, symbol, market))


@command
def replicate(
    check: bool = typer.Option(False, "--check", help="Only compare and report."),
    since: str | None = typer.Option(None, "--since", help="Only buckets from this time (ISO)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Catch the dual-write replica up from landing and prove equality.

    Per-bucket row count + content checksum, the same SQL on both servers. Exit 1 if any bucket
    still differs.
    """
    from workers.app import operations

    emit(operations.replicate_command(_context("replicate"), check_only=check, since=since),
         json_out)


@command
def landing(
    reland: bool = typer.Option(
        False, "--reland-from-primary", help="Write back every missing or changed object "
        "whose registered SHA-256 the primary's ticks of its bucket reproduce exactly (under "
        "the bucket's lock); the others are named. Then audit again."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check that landing holds every object the registry vouches for (one LIST per 1,000 keys).

    Names objects missing from landing, changed since registered (size / ETag, then SHA-256),
    registered in another bucket, and objects no registry row names. Exit 1 when landing lacks
    or changed a registered object (after --reland-from-primary: when it still does).
    """
    from workers.app.landing_checks import landing_check

    emit(landing_check(_context("landing"), reland=reland), json_out)


@command
def repair(
    check: bool = typer.Option(False, "--check", help="Only compare and report."),
    since: str | None = typer.Option(None, "--since", help="Only buckets from this time (ISO)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Give the primary back what landing holds and it lost (ticks, 5-minute aggregates).

    Every registered bucket's row count against the primary's ticks (digests refreshed first);
    buckets that fall short are re-loaded from their landing objects (SHA-256 checked) as the
    ingest login. Buckets retention removed are left alone; rows landing lacks are reported,
    never deleted. Exit 1 if a bucket is short (with --check) or still short after the repair.
    """
    from workers.app import operations

    emit(operations.repair(_context("repair"), check_only=check,
                           since=operations.parse_time(since)), json_out)


@command
def embed(
    symbol: str | None = typer.Option(None, "--symbol", help="Only this symbol."),
    market: str | None = typer.Option(None, "--market", help="Only this market."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Compute 256-d embeddings for closed 5-minute windows (incremental), and their labels.

    Features are documented in workers/signals/features.py; windows with fewer than 30 trades
    are skipped and counted. Runs as the tickstack_embed login (TICKSTACK_EMBED_DSN).
    """
    from workers.app import operations

    emit(operations.timed("embed", operations.embed(_context("embed"), symbol=symbol,
                                                    market=market)), json_out)


@command
def similar(
    at: str = typer.Option(..., "--at", help="A time inside the query window (ISO, UTC), "
                           "or 'latest' for the newest embedded window."),
    k: int = typer.Option(10, "-k", min=1, max=1000, help="How many neighbours."),
    symbol: str = typer.Option("BTCUSDT", "--symbol"),
    market: str = typer.Option("spot", "--market", help=f"{choices_help()}."),
    exclude_minutes: int = typer.Option(
        60, "--exclude-minutes", min=0,
        help="Ignore windows this close before the query (0: include the window itself)."),
    probes: int | None = typer.Option(None, "--probes", min=1, help="ivfflat lists to probe "
        "(default: what the index's build measured for recall@10 >= 0.985); more is slower."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Nearest past windows and what followed them, against the unconditional mean."""
    from workers.app import operations

    when = None if at == "latest" else operations.parse_time(at)
    r = operations.similar(_context("similar"), symbol=symbol.upper(), market=market, at=when,
                           k=k, exclude_minutes=exclude_minutes, probes=probes)
    emit(operations.Shown(r, text=lambda r: [r.table()]), json_out)


@command
def retention(
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would happen; change nothing."),
    job: str | None = typer.Option(None, "--job", help="Only this job (by job_name)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Apply ops.retention_jobs on the primary, then the replica (when configured).

    drop_after drops whole chunks on TimescaleDB and deletes rows in batches on plain
    PostgreSQL; compress_after compresses chunks where the licence allows. Nothing that landing
    does not hold is removed. Every job's outcome is audited in ops.retention_runs; a bad job
    is rejected alone. Exit 1 when any job was rejected or failed.
    """
    from workers.app import operations

    r = operations.retention(_context("retention"), dry_run=dry_run, job=job)
    emit(operations.Shown(r, text=lambda r: r.details()), json_out)


@command
def backup(
    type_: str = typer.Option("full", "--type", help="full | diff | incr"),
    check: bool = typer.Option(
        False, "--check", help="Only report: WAL archiving (pg_stat_archiver, waiting segments, "
        "a fresh archived WAL switch), the repository's backups, and whether the archive holds "
        "every WAL segment recovery from the oldest backup on needs. Exit 1 when archiving is "
        "failing or stalled, or a segment is missing (named, with its range)."),
    stanza_create: bool = typer.Option(False, "--stanza-create", help="Only create the stanza "
                                       "if missing and check that WAL reaches the repository "
                                       "(the deploy's stanza Job); exit 1 otherwise."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """pgBackRest backup of the primary into the backup bucket (stanza created if missing).

    Retention of backups (full sets kept, diffs kept) is in pgbackrest.conf, rendered by
    infra/configs.py for the cloud and the local environment alike.
    """
    from workers.app import operations

    ctx = _context("backup")
    if stanza_create:
        r = operations.stanza_create(ctx)
    elif check:
        r = operations.Shown(operations.archive_check(ctx), text=lambda r: r.details())
    else:
        r = operations.timed("backup", operations.backup(ctx, type_))
    emit(r, json_out)


@command
def restore(
    target_time: str = typer.Option(..., "--target-time",
                                     help="Point in time to restore to (ISO, UTC if no zone)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the primary is running "
                               "and healthy (its data directory is moved aside, not deleted)."),
    skip_pitr: bool = typer.Option(
        False, "--skip-pitr", help="The database was already restored (the Kubernetes init "
        "container does it): only verify and replay landing."),
    timeline: str = typer.Option(
        "latest", "--timeline", help="latest: follow the newest timeline in the WAL archive "
        "(what happened after an earlier restore too); current: the timeline of the backup — "
        "to restore to the same time again after a restore that promoted there."),
    no_replay: bool = typer.Option(
        False, "--no-replay", help="Stop after the point-in-time restore (inspect the state at "
        "the target; a later --skip-pitr run replays landing)."),
) -> None:
    """Disaster-recovery rebuild: PITR restore to the target, then landing replay after it.

    Checks first, with the primary untouched (a backup set before the target, archived WAL
    reaching past it, target not in the future): what cannot succeed is refused at once, exit
    2. A restore that fails or is interrupted (SIGINT/SIGTERM: exit 130) after the primary was
    stopped puts it back; one killed outright is undone by the next `python -m infra.local up`
    or `restore`. Prints each step's
    duration (the recovery time) and the newest tick before and after the landing replay.
    """
    from workers.app import operations

    target = operations.parse_time(target_time)
    emit(operations.restore(_context("restore"), target, force=force, skip_pitr=skip_pitr,
                            timeline=timeline, no_replay=no_replay))


@command
def up(
    paths: list[str] = typer.Argument(
        None, help="Binance trade dumps to ingest (make up passes the real day in ../shared/data; "
        "`make up DATA=…` other files)."),
    fetch_day: str | None = typer.Option(
        None, "--fetch-day", help="Also fetch this day (YYYY-MM-DD) of BTCUSDT spot trades from "
        "Binance's public archive (cached, verified) and ingest it: make up without "
        "../shared/data."),
    report_dir: str | None = typer.Option(
        None, "--report-dir", help="Where the HTML report goes (default TICKSTACK_REPORT_DIR)."),
    force_backup: bool = typer.Option(
        False, "--force-backup", help="Take a full backup even when the last one holds the "
        "same data."),
) -> None:
    """The main job (make up): every stage, a summary table and an HTML report.

    migrate, ingest, replicate, embed, retention (dry-run, then real), full backup, archive
    check, one similar-windows query. A second run over the same data changes nothing and says
    so.
    """
    from workers.app import up as main_job
    from workers.core import logs

    ctx = _context("up")
    if not paths and not fetch_day:
        _usage("up: give dump files to ingest, or --fetch-day")
    if "log_level" not in ctx.settings.model_fields_set:
        # The progress lines and the summary say what happened; logs only for trouble
        # (TICKSTACK_LOG_LEVEL=info brings every worker's log lines back).
        logs.configure(ctx.settings.log_format, "warning")
    emit(main_job.main(ctx, paths or [], report_dir=report_dir or ctx.settings.report_dir,
                       force_backup=force_backup, fetch_day=fetch_day))
