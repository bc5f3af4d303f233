"""`python -m workers <command>`: the worker entry point (one image, one command per workload).

Exit status: 0 done; 1 failed (the message says what and where); 2 bad usage or bad input.
"""

from __future__ import annotations

import typer

from workers import logs
from workers.settings import Settings

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
    import json

    from workers import migrate as m

    s = _settings()
    targets = [("server", dsn)] if dsn else [("primary", s.primary_dsn.get_secret_value())] + (
        [("replica", s.replica_dsn.get_secret_value())] if s.has_replica else [])
    logins = None
    if s.worker_logins_file:
        with open(s.worker_logins_file) as f:
            raw = json.load(f)
        logins = {group: (v["user"], v["password"]) for group, v in raw.items()}
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
    paths: list[str] = typer.Argument(..., help="Binance dump files (.csv/.zip) or s3:// URIs."),
    symbol: str | None = typer.Option(None, "--symbol", help="Override the file's symbol."),
) -> None:
    """Ingest Binance trade dumps or replay landing objects: landing first, then the primary."""
    _not_yet("ingest")


@app.command()
def stream(
    url: str = typer.Option(..., "--url", help="Binance websocket URL (wss://…)."),
    symbol: str = typer.Option("BTCUSDT", "--symbol"),
) -> None:
    """Consume a live trade stream (reconnects, detects gaps)."""
    _not_yet("stream")


@app.command()
def replicate(
    check: bool = typer.Option(False, "--check", help="Only compare and report."),
) -> None:
    """Catch the dual-write replica up from landing and prove equality."""
    _not_yet("replicate")


@app.command()
def embed() -> None:
    """Compute 256-d embeddings for closed 5-minute windows."""
    _not_yet("embed")


@app.command()
def similar(
    at: str = typer.Option(..., "--at", help="Timestamp of the query window."),
    k: int = typer.Option(10, "-k", help="How many neighbours."),
) -> None:
    """Nearest past windows and what followed them."""
    _not_yet("similar")


@app.command()
def retention(
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would happen; change nothing."),
) -> None:
    """Apply ops.retention_jobs (drop / compress chunks)."""
    _not_yet("retention")


@app.command()
def backup(
    type_: str = typer.Option("full", "--type", help="full | diff | incr"),
    check: bool = typer.Option(False, "--check", help="Report archive and backup state."),
) -> None:
    """pgBackRest backup of the primary."""
    _not_yet("backup")


@app.command()
def restore(
    target_time: str = typer.Option(..., "--target-time", help="Point in time to restore to."),
    force: bool = typer.Option(False, "--force", help="Overwrite a running primary."),
) -> None:
    """Disaster-recovery rebuild: PITR restore, then landing replay."""
    _not_yet("restore")


def main() -> None:
    app()
