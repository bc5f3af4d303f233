"""`python -m workers <command>`: the worker entry point (one image, one command per workload).

Exit status: 0 done; 1 failed (the message says what and where); 2 bad usage or bad input.
"""

from __future__ import annotations

import typer

from workers.core import logs
from workers.core.settings import Settings

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

EXIT_FAILED = 1
EXIT_USAGE = 2


def _settings() -> Settings:
    s = Settings()
    logs.configure(s.log_format, s.log_level)
    return s


def _not_yet(command: str) -> None:
    typer.echo(f"workers {command}: not implemented yet in this version of tickstack", err=True)
    raise typer.Exit(EXIT_USAGE)


@app.command()
def migrate(
    status: bool = typer.Option(False, "--status", help="List applied and pending files only."),
    dsn: str | None = typer.Option(
        None, "--dsn", help="Migrate only this server (default: the primary, then the replica "
        "when TICKSTACK_REPLICA_DSN is set)."),
) -> None:
    """Apply sql/ migrations in order (checksummed, under an advisory lock), on every server."""
    from workers.db import migrate as m

    s = _settings()
    targets = [("server", dsn)] if dsn else s.servers()
    logins = m.load_logins(s.worker_logins_file)
    for name, target in targets:
        try:
            r = m.run(target, status_only=status, logins=logins)
        except m.MigrationError as e:
            typer.echo(f"migrate {name}: {e}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        except Exception as e:  # connection errors and the like: say where, not a traceback
            typer.echo(f"migrate {name}: {type(e).__name__}: {e}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        caps = r.capabilities
        flavour = (f"TimescaleDB {caps['timescaledb']} ({caps['timescaledb_license']} licence)"
                   if caps["timescaledb"] else "plain PostgreSQL")
        if status:
            typer.echo(f"{name}: {len(r.already)} applied, {len(r.pending)} pending — {flavour}")
            for f in r.already:
                typer.echo(f"  applied  {f}")
            for f in r.pending:
                typer.echo(f"  pending  {f}")
        else:
            what = f"applied {len(r.applied)}" if r.applied else "up to date, nothing applied"
            typer.echo(f"{name}: {what} ({len(r.already) + len(r.applied)} total) — {flavour}")


@app.command()
def ingest(
    paths: list[str] = typer.Argument(
        None, help="Binance dump files (.csv/.zip, a .CHECKSUM beside a zip is verified) or "
        "landing prefixes s3://<landing bucket>/raw/<SYMBOL>/…"),
    symbol: str | None = typer.Option(None, "--symbol", help="Symbol when the file name "
                                         "does not say (BTCUSDT-trades-….zip does)."),
    from_landing: bool = typer.Option(False, "--from-landing",
                                      help="Replay every landing object (with --since/--until)."),
    since: str | None = typer.Option(None, "--since", help="Replay from (ISO timestamp)."),
    until: str | None = typer.Option(None, "--until", help="Replay until (exclusive)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Ingest Binance trade dumps, or replay landing objects: landing first, then the primary.

    Bad rows are quarantined (line, reason) to quarantine/… in the landing bucket; a file that is
    not a trade file at all fails with exit 2 and nothing of it is written.
    """
    from workers.core.memory import limit_allocator_retention

    limit_allocator_retention()
    from workers.core.s3 import client
    from workers.db import ingest as ing
    from workers.landing.store import Landing

    s = _settings()
    if not paths and not from_landing:
        typer.echo("ingest: give files or s3:// prefixes, or --from-landing", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        since_us, until_us = _us(since), _us(until)
    except ValueError as e:
        typer.echo(f"ingest: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    from workers.replica.writer import ReplicaWriter

    landing = Landing(client(s), s.landing_bucket)
    summaries = []
    replica = ReplicaWriter.from_settings(s)  # best-effort dual-write; None without a replica
    try:
        with _connect(s.dsn_for("ingest")) as conn:
            targets = list(paths or []) + (["s3://" + s.landing_bucket + "/raw/"]
                                           if from_landing else [])
            for p in targets:
                with _progress(p) as progress:
                    if p.startswith("s3://"):
                        bucket, _, prefix = p.removeprefix("s3://").partition("/")
                        if bucket != s.landing_bucket:
                            typer.echo(f"ingest: {p} is not in the landing bucket "
                                       f"{s.landing_bucket}", err=True)
                            raise typer.Exit(EXIT_USAGE)
                        r = ing.ingest_landing(conn, landing, prefix, since_us=since_us,
                                               until_us=until_us, progress=progress)
                    else:
                        r = ing.ingest_file(conn, landing, p, symbol=symbol, progress=progress,
                                            block_bytes=s.ingest_block_bytes,
                                            flush_rows=s.ingest_flush_rows, replica=replica)
                summaries.append(r)
                _print_summary(r, json_out)
    except ing.BadFile as e:
        typer.echo(f"ingest: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except psycopg_errors() as e:
        typer.echo(f"ingest: database error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        if replica is not None:
            replica.close()
            if not json_out and (replica.stats["written"] or len(replica.stats) > 1):
                typer.echo("replica (best effort): " + ", ".join(
                    f"{k} {v}" for k, v in sorted(replica.stats.items())), err=True)


def _us(value: str | None) -> int | None:
    if not value:
        return None
    from datetime import UTC, datetime

    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO timestamp: {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


def psycopg_errors():
    import psycopg

    return psycopg.Error


def _connect(dsn: str):
    import psycopg

    return psycopg.connect(dsn)


def _progress(path: str):
    """A rich progress line on a terminal; periodic log lines otherwise."""
    import contextlib
    import sys
    import time

    log = logs.get("ingest")
    if sys.stderr.isatty():
        from rich.progress import Progress, TextColumn, TimeElapsedColumn

        @contextlib.contextmanager
        def bar():
            with Progress(TextColumn("[bold]{task.description}"), TextColumn("{task.fields[s]}"),
                          TimeElapsedColumn(), transient=True) as p:
                task = p.add_task(path.rsplit("/", 1)[-1], s="")
                t0 = time.monotonic()

                def update(sm):
                    rate = sm.rows_read / max(time.monotonic() - t0, 1e-9)
                    p.update(task, s=f"{sm.rows_read:,} rows  {rate:,.0f} rows/s  "
                                     f"{sm.buckets_landed} buckets")
                yield update
        return bar()

    @contextlib.contextmanager
    def lines():
        last = [0.0]

        def update(sm):
            if time.monotonic() - last[0] >= 5:
                last[0] = time.monotonic()
                log.info("progress", source=path, rows=sm.rows_read,
                         buckets=sm.buckets_landed)
        yield update
    return lines()


def _print_summary(r, json_out: bool) -> None:
    import json

    d = r.as_dict()
    if json_out:
        typer.echo(json.dumps(d))
        return
    q = ", ".join(f"{k}: {v}" for k, v in sorted(d["quarantined_by_reason"].items())) or "none"
    typer.echo(
        f"{d['source']}: read {d['rows_read']:,}, accepted {d['accepted']:,}, "
        f"inserted {d['inserted']:,}, duplicates {d['duplicates']:,}, "
        f"quarantined {d['quarantined']:,} ({q}); buckets landed {d['buckets_landed']}, "
        f"unchanged {d['buckets_unchanged']}; {d['seconds']:.1f} s"
        + (f"\n  quarantine: {d['quarantine_uri']}" if d["quarantine_uri"] else ""))


@app.command()
def stream(
    url: str = typer.Option(None, "--url", help="Binance websocket URL (wss://…), raw "
                            "(/ws/btcusdt@trade) or combined (/stream?streams=btcusdt@trade)."),
    symbol: str = typer.Option("BTCUSDT", "--symbol"),
    gaps: bool = typer.Option(False, "--gaps", help="Only re-check and list the recorded "
                              "trade-id gaps (filled only once every id is present); no "
                              "connection."),
    json_out: bool = typer.Option(False, "--json", help="With --gaps: print JSON."),
) -> None:
    """Consume a live trade stream (reconnects, detects gaps).

    Landing first, then the primary (ticks + offset in one transaction), then the replica (best
    effort). SIGTERM: the batch in flight is committed, exit 0. Health and metrics on
    TICKSTACK_HEALTH_PORT: /healthz, /readyz, /metrics.
    """
    import asyncio
    import json

    from workers.core import crashpoint
    from workers.core.health import HealthServer, Metrics
    from workers.core.s3 import client
    from workers.db import stream as st
    from workers.db.stream_commit import refresh_gaps
    from workers.landing.store import Landing
    from workers.replica.writer import ReplicaWriter

    s = _settings()
    if gaps:
        try:
            with _connect(s.dsn_for("ingest")) as conn:
                rows = refresh_gaps(conn, symbol.upper())
        except psycopg_errors() as e:
            typer.echo(f"stream: database error: {e}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        if json_out:
            typer.echo(json.dumps(rows, default=str))
            return
        if not rows:
            typer.echo(f"stream: no trade-id gaps recorded for {symbol.upper()}")
        for g in rows:
            n = g["last_missing_id"] - g["first_missing_id"] + 1
            state = f"filled {g['filled_at']:%Y-%m-%d %H:%M:%S}" if g["filled_at"] else \
                f"OPEN ({g['present_count']:,} of {n:,} present)"
            span = f"{g['after_time'].isoformat()} .. {g['before_time'].isoformat()}"
            typer.echo(f"{g['source']} {g['symbol']} ids {g['first_missing_id']}.."
                       f"{g['last_missing_id']} ({n:,} trades) between {span}: {state}")
        return
    if not url:
        typer.echo("stream: --url is required (or --gaps)", err=True)
        raise typer.Exit(EXIT_USAGE)
    if not url.startswith(("ws://", "wss://")):
        typer.echo(f"stream: --url must be a ws:// or wss:// URL, not {url!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    crashpoint.configure(s.crash_at)
    cfg = st.StreamConfig.from_settings(s, url, symbol)
    metrics = Metrics()
    landing = Landing(client(s), s.landing_bucket)
    replica = ReplicaWriter.from_settings(s, metrics)
    log = logs.get("stream")
    try:
        with _connect(s.dsn_for("ingest")) as conn:
            conn.autocommit = True
            w = st.StreamWorker(cfg, conn, landing, replica, metrics)
            import signal

            def early_stop(*_):  # SIGTERM while recovering: stop once recovered (then the
                w.stopping = True  # event loop's own handlers take over)

            signal.signal(signal.SIGTERM, early_stop)
            signal.signal(signal.SIGINT, early_stop)
            health = HealthServer(metrics, s.health_host, s.health_port, w.heartbeat.alive,
                                  w.ready).start()
            log.info("health server", host=s.health_host, port=health.port)
            try:
                w.recover()
                asyncio.run(w.run())
            finally:
                health.stop()
    except psycopg_errors() as e:
        typer.echo(f"stream: database error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        if replica is not None:
            replica.close()
    log.info("stream stopped", trades=metrics.value("tickstack_stream_trades_total",
                                                    outcome="accepted"),
             batches=metrics.value("tickstack_stream_batches_total"))


@app.command()
def replicate(
    check: bool = typer.Option(False, "--check", help="Only compare and report."),
    since: str | None = typer.Option(None, "--since", help="Only buckets from this time (ISO)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Catch the dual-write replica up from landing and prove equality.

    Per-bucket row count + content checksum, the same SQL on both servers. Exit 1 if any bucket
    still differs.
    """
    import json
    from datetime import UTC, datetime

    from workers.replica import catchup as rep

    s = _settings()
    try:
        since_us = _us(since)
    except ValueError as e:
        typer.echo(f"replicate: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if not s.has_replica:
        typer.echo("replicate: TICKSTACK_REPLICA_DSN is empty: no replica configured", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        r = rep.run_from_settings(s, check_only=check, since=None if since_us is None else
                                  datetime.fromtimestamp(since_us / 1e6, UTC))
    except rep.ReplicateError as e:
        typer.echo(f"replicate: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    except psycopg_errors() as e:
        typer.echo(f"replicate: database error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    d = r.as_dict()
    if json_out:
        typer.echo(json.dumps(d))
    else:
        typer.echo(f"replicate: {d['did']} ({d['seconds']:.1f} s)")
        b = d["before"]
        typer.echo(f"  before: replica {b['buckets']} buckets / {b['rows']:,} rows; missing "
                   f"{b['missing']}, different {b['different']}, only on the replica "
                   f"{b['extra']}")
        for line in d["differing"][:50]:
            typer.echo(f"  differs: {line}")
        if len(d["differing"]) > 50:
            typer.echo(f"  … and {len(d['differing']) - 50} more")
    if d["differing"]:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def embed(
    symbol: str | None = typer.Option(None, "--symbol", help="Only this symbol."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Compute 256-d embeddings for closed 5-minute windows (incremental), and their labels.

    Features are documented in workers/features.py; windows with fewer than 30 trades are
    skipped and counted. Runs as the tickstack_embed login (TICKSTACK_EMBED_DSN).
    """
    import json

    from workers.signals import embed as emb

    s = _settings()
    try:
        with _connect(s.dsn_for("embed")) as conn:
            r = emb.run(conn, symbol=symbol, index_min_rows=s.vector_index_min_rows)
    except psycopg_errors() as e:
        typer.echo(f"embed: database error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    d = r.as_dict()
    if json_out:
        typer.echo(json.dumps(d))
    else:
        typer.echo(f"embed: {d['embedded']} windows embedded, {d['skipped_few_trades']} skipped "
                   f"(too few trades), {d['labels_updated']} label snapshots updated; "
                   f"{d['seconds']:.1f} s\n  vector index: {d['index']}")


@app.command()
def similar(
    at: str = typer.Option(..., "--at", help="A time inside the query window (ISO, UTC), "
                           "or 'latest' for the newest embedded window."),
    k: int = typer.Option(10, "-k", min=1, max=1000, help="How many neighbours."),
    symbol: str = typer.Option("BTCUSDT", "--symbol"),
    exclude_minutes: int = typer.Option(
        60, "--exclude-minutes", min=0,
        help="Ignore windows this close before the query (0: include the window itself)."),
    probes: int | None = typer.Option(None, "--probes", min=1,
                                      help="ivfflat probes (default ~sqrt(lists))."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Nearest past windows and what followed them, against the unconditional mean."""
    import json

    from workers.signals import similar as sim

    s = _settings()
    when = None
    if at != "latest":
        try:
            at_us = _us(at)
        except ValueError as e:
            typer.echo(f"similar: {e}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        from datetime import UTC, datetime

        when = datetime.fromtimestamp(at_us / 1e6, UTC)
    try:
        with _connect(s.dsn_for("reader")) as conn:
            when = when or sim.latest_window(conn, symbol.upper())
            r = sim.query(conn, symbol=symbol.upper(), at=when, k=k,
                          exclude_minutes=exclude_minutes, probes=probes)
    except sim.NoEmbedding as e:
        typer.echo(f"similar: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except psycopg_errors() as e:
        typer.echo(f"similar: database error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    if json_out:
        typer.echo(json.dumps(r))
        return
    from rich.console import Console
    from rich.table import Table

    def pct(x):
        return "-" if x is None else f"{x * 100:+.3f}%"

    t = Table(title=f"{r['symbol']} windows most like {r['window']} "
                    f"(k={r['k']}, probes={r['probes'] or 'exact'})")
    for col in ("window", "distance", "+5m", "+15m", "+60m", "vol 60m"):
        t.add_column(col, justify="right")
    for n in r["neighbours"]:
        lab = n["labels"]
        t.add_row(n["bucket"][:16], f"{n['distance']:.4f}", pct(lab.get("fwd_ret_5m")),
                  pct(lab.get("fwd_ret_15m")), pct(lab.get("fwd_ret_60m")),
                  pct(lab.get("fwd_vol_60m")))
    m = r["means"]
    t.add_section()
    t.add_row("neighbours' mean", "", *(pct(m[key]["neighbours"]) for key in sim.LABEL_KEYS))
    t.add_row("all windows' mean", "", *(pct(m[key]["unconditional"]) for key in sim.LABEL_KEYS))
    Console().print(t)


@app.command()
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
    import json

    from workers.ops import retention as ret

    s = _settings()
    targets = s.retention_targets()
    bad = False
    out = {}
    for name, dsn in targets:
        try:
            with _connect(dsn) as conn:
                results = ret.run(conn, dry_run=dry_run, job=job)
        except LookupError as e:
            typer.echo(f"retention {name}: {e}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        except psycopg_errors() as e:
            typer.echo(f"retention {name}: database error: {e}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        out[name] = [r.as_dict() for r in results]
        bad |= any(r.outcome in ("rejected", "failed") for r in results)
        if json_out:
            continue
        for r in results:
            line = f"retention {name}: {r.job} ({r.table}): {r.outcome}"
            if r.reason:
                line += f" — {r.reason}"
            typer.echo(line)
            for a in r.actions:
                if "skipped" in a:
                    typer.echo(f"    {a['action']}: {a['skipped']}")
                    continue
                verb = "would " if dry_run else ""
                unit = f"{a.get('chunks', 0)} chunks, " if a["action"] != "delete" else ""
                rng = f" ({a['range'][0][:10]} .. {a['range'][1][:10]})" if a.get("range") else ""
                typer.echo(f"    {verb}{a['action']}: {unit}{a.get('rows', 0):,} rows older "
                           f"than {a['cutoff'][:19]}{rng}")
                if a.get("held_back"):
                    typer.echo(f"    held back: {a['held_back']}")
    if json_out:
        typer.echo(json.dumps(out))
    if bad:
        raise typer.Exit(EXIT_FAILED)


def _tool(s: Settings, command: str):
    from workers.ops.backup import Tool

    if not s.pgbackrest_config:
        typer.echo(f"{command}: TICKSTACK_PGBACKREST_CONFIG is not set (the pgbackrest.conf "
                   "rendered by infra/configs.py; `python -m infra.local env` sets it)", err=True)
        raise typer.Exit(EXIT_USAGE)
    return Tool.from_settings(s)


@app.command()
def backup(
    type_: str = typer.Option("full", "--type", help="full | diff | incr"),
    check: bool = typer.Option(
        False, "--check", help="Only report: WAL archiving (pg_stat_archiver, waiting segments, "
        "a fresh archived WAL switch) and the repository's backups. Exit 1 when archiving is "
        "failing or stalled."),
    stanza_create: bool = typer.Option(
        False, "--stanza-create", help="Only create the stanza if missing (idempotent) and run "
        "`pgbackrest check` (a WAL switch must reach the repository); exit 1 otherwise. The "
        "cloud's stanza Job runs this at every deploy, where a failure fails the deploy."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """pgBackRest backup of the primary into the backup bucket (stanza created if missing).

    Retention of backups (full sets kept, diffs kept) is in pgbackrest.conf, rendered by
    infra/configs.py for the cloud and the local environment alike.
    """
    import json

    from workers.ops import backup as bk

    s = _settings()
    tool = _tool(s, "backup")
    if type_ not in ("full", "diff", "incr"):
        typer.echo(f"backup: --type must be full, diff or incr, not {type_!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        if stanza_create:
            bk.ensure_stanza(tool)
            tool.ok("check", "--archive-timeout=60", timeout=300)
            typer.echo(f"backup: stanza {s.stanza} exists and WAL archiving reaches the "
                       "repository")
            return
        if check:
            with _connect(s.dsn_for("backup")) as conn:
                r = bk.check(conn, tool, stall_seconds=s.archive_stall_seconds).as_dict()
        else:
            r = bk.backup(tool, type_)
    except bk.BackupError as e:
        typer.echo(f"backup: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    except psycopg_errors() as e:
        typer.echo(f"backup: database error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    if json_out:
        typer.echo(json.dumps(r, default=str))
    elif check:
        a = r["archiver"]
        typer.echo(f"archive: {'healthy' if r['healthy'] else 'UNHEALTHY'} — archived "
                   f"{a['archived_count']} (last {a['last_archived_wal']} at "
                   f"{a['last_archived_time']}), failed {a['failed_count']}, "
                   f"{r['ready_segments']} waiting")
        if r["repository"]:
            rep = r["repository"]
            typer.echo(f"repository: {rep['status']}; {rep['backups']} backups; WAL "
                       f"{rep['wal_min']} .. {rep['wal_max']}")
        for p in r["problems"]:
            typer.echo(f"  problem: {p}")
    else:
        typer.echo(f"backup: {r['type']} {r['label']} — {(r['size_bytes'] or 0) / 2**20:.0f} MB "
                   f"database, {(r['repo_bytes'] or 0) / 2**20:.1f} MB stored; "
                   f"{r['backups_kept']} backups kept; {r['seconds']:.1f} s")
    if check and not r["healthy"]:
        raise typer.Exit(EXIT_FAILED)


@app.command()
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

    Prints each step's duration (the recovery time) and the newest tick before and after the
    landing replay.
    """
    from datetime import UTC, datetime

    from workers.db.ingest import BadFile
    from workers.db.migrate import discover
    from workers.ops import restore as rs
    from workers.ops.backup import BackupError

    s = _settings()
    try:
        target = datetime.fromtimestamp(_us(target_time) / 1e6, UTC)
    except ValueError as e:
        typer.echo(f"restore: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    report = rs.RestoreReport(target.isoformat())
    admin = s.primary_dsn.get_secret_value()
    try:
        if not skip_pitr:
            if timeline not in ("latest", "current"):
                typer.echo("restore: --timeline must be latest or current", err=True)
                raise typer.Exit(EXIT_USAGE)
            import dataclasses

            tool = _tool(s, "restore")
            if s.pgbackrest_pg_config:  # restore runs on the database host, with its file
                tool = dataclasses.replace(tool, config=s.pgbackrest_pg_config)
            rs.pitr(tool, s.pg_bindir, target, force=force, admin_dsn=admin,
                    report=report, timeline=timeline)
        with _connect(admin) as conn:
            report.timed("verify extensions and migration ledger",
                         lambda: rs.verify(conn, [(m.name, m.sha256) for m in discover()]))
            report.newest_tick_before_replay = rs.newest_tick(conn)
        if no_replay:
            report.newest_tick_after = report.newest_tick_before_replay
        else:
            _replay(s, rs, report, target)
    except rs.RestoreRefused as e:
        typer.echo(f"restore: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except (BackupError, BadFile) as e:
        typer.echo(f"restore: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    except psycopg_errors() as e:
        typer.echo(f"restore: database error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(f"restore to {report.target}: done in {report.seconds:.1f} s")
    for st in report.steps:
        typer.echo(f"  {st.seconds:7.1f} s  {st.name}" + (f" — {st.detail}" if st.detail else ""))
    typer.echo(f"  newest tick: {report.newest_tick_before_replay} from WAL, "
               f"{report.newest_tick_after} after landing replay")


def _replay(s: Settings, rs, report, target) -> None:
    from workers.core.s3 import client
    from workers.landing.store import Landing

    with _connect(s.dsn_for("ingest")) as conn:
        landing = Landing(client(s), s.landing_bucket)

        def replay() -> str:
            report.replayed_objects, report.replayed_rows = rs.replay_gap(conn, landing, target)
            return f"{report.replayed_objects} landing objects, {report.replayed_rows:,} rows"

        report.timed("landing replay after the target", replay)
        report.newest_tick_after = rs.newest_tick(conn)


@app.command()
def up(
    paths: list[str] = typer.Argument(
        ..., help="Binance trade dumps to ingest (make up passes the real day in ../shared/data; "
        "`make up DATA=…` other files)."),
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
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from workers.app import up as mj
    from workers.core.memory import limit_allocator_retention

    limit_allocator_retention()
    s = _settings()
    if "log_level" not in s.model_fields_set:
        # The progress lines and the summary say what happened; logs only for trouble
        # (TICKSTACK_LOG_LEVEL=info brings every worker's log lines back).
        logs.configure(s.log_format, "warning")
    console = Console()

    def progress(st) -> None:
        mark = ("[red]FAILED[/]" if not st.ok else
                "[green]done[/]" if st.changed else "[dim]same[/]")
        console.print(f"{mark} {st.name} ({st.seconds:.1f} s): {escape(st.did)}", highlight=False)

    run, failure = mj.run_all(s, paths, on_stage=progress, force_backup=force_backup)
    try:
        from workers.app import report

        run.report = str(report.write(run, s.dsn_for("reader"), report_dir or s.report_dir))
    except Exception as e:  # the summary still matters when a figure cannot be drawn
        console.print(f"[yellow]report not written: {type(e).__name__}: {e}[/]")
    t = Table(title="tickstack make up — summary", show_lines=False)
    t.add_column("stage")
    t.add_column("what it did", overflow="fold")
    t.add_column("time", justify="right")
    for st in run.stages:
        style = "red" if not st.ok else (None if st.changed else "dim")
        t.add_row(st.name, escape(st.did), f"{st.seconds:.1f} s", style=style)
    t.add_section()
    t.add_row("total", "", f"{sum(st.seconds for st in run.stages):.1f} s")
    console.print(t)
    if run.report:
        console.print(f"report: {run.report}")
    if failure:
        console.print(f"[red]make up stopped at {failure.stage}:[/] {escape(str(failure))}",
                      highlight=False)
        raise typer.Exit(EXIT_FAILED)
    console.print("nothing changed: the platform was already up to date with this data"
                  if not run.changed else "done: the platform is up to date with this data")


def main() -> None:
    """Run the command, then leave without C++ static destructors: Arrow's worker threads were
    seen to abort an otherwise finished process at interpreter exit now and then
    ("terminate called without an active exception", apache/arrow#34314), turning exit 0 or 2
    into -6. Everything of ours is committed or flushed by then."""
    import os
    import sys

    code = 0
    try:
        app()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            code = 1
        else:
            code = e.code or 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
