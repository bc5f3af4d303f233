"""`python -m infra.local up | down | status | env` — the local environment on one machine."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from infra.local.env import DEFAULT_STATE, LocalEnv
from infra.local.procs import PartError

app = typer.Typer(
    help="The local tickstack environment: PostgreSQL primary (TimescaleDB + pgvector), "
    "replica (pgvector only), S3 (moto behind a TLS terminator) and pgBackRest. "
    "Every server listens on 127.0.0.1 only; state lives in .tickstack/.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
_state: dict[str, Path] = {"dir": DEFAULT_STATE}


@app.callback()
def _main(
    state_dir: Path = typer.Option(
        DEFAULT_STATE, "--state-dir", envvar="TICKSTACK_STATE_DIR",
        help="Where the environment keeps its data, ports and logs.",
    ),
) -> None:
    _state["dir"] = state_dir


def _env() -> LocalEnv:
    return LocalEnv(_state["dir"])


def _fail(e: PartError) -> None:
    err.print(f"[bold red]failed:[/] {e.part}", highlight=False)
    err.print(str(e), markup=False, highlight=False)
    raise typer.Exit(1)


@app.command()
def up() -> None:
    """Start every part that is not running (idempotent: a second run restarts nothing)."""
    env = _env()
    try:
        started = env.up()
    except PartError as e:
        _fail(e)
    # Parts by name on one line; what was done to them (upgrades, backups) a line each.
    names = [s for s in started if ":" not in s]
    if names:
        out.print("started: " + ", ".join(names), highlight=False)
    for s in started:
        if ":" in s:
            out.print(s, markup=False, highlight=False, soft_wrap=True)
    if not started:
        out.print("already up: nothing to start")
    _print_status(env)


@app.command()
def down() -> None:
    """Stop every part (PostgreSQL first); data and the S3 snapshot are kept."""
    env = _env()
    try:
        stopped = env.down()
    except PartError as e:
        _fail(e)
    out.print("stopped: " + ", ".join(stopped) if stopped else "already down")


@app.command()
def status() -> None:
    """Each part with its port and health; exit 1 when any part is not healthy."""
    env = _env()
    if not _print_status(env):
        raise typer.Exit(1)


@app.command()
def env() -> None:
    """Print `export` lines for the workers: eval "$(python -m infra.local env)"."""
    for k, v in sorted(_env().env().items()):
        typer.echo(f"export {k}={shlex.quote(v)}")


@app.command()
def clean(
    yes: bool = typer.Option(False, "--yes", help="Really delete all local state."),
) -> None:
    """Stop everything and delete the state directory (all local data)."""
    if not yes:
        err.print("clean deletes every local database and S3 object; pass --yes")
        raise typer.Exit(2)
    env = _env()
    try:
        env.down()
    except PartError as e:
        _fail(e)
    shutil.rmtree(env.state, ignore_errors=True)
    sock = env.primary.socket_dir.parent
    if str(sock).startswith("/tmp/tickstack-"):
        shutil.rmtree(sock, ignore_errors=True)
    out.print(f"deleted {env.state}")


def _print_status(env: LocalEnv) -> bool:
    t = Table(title=f"tickstack local environment ({env.state})")
    t.add_column("part")
    t.add_column("port", justify="right")
    t.add_column("health")
    t.add_column("detail")
    ok = True
    for s in env.status():
        ok &= s.healthy
        t.add_row(s.part, str(s.port or "-"), "[green]ok[/]" if s.healthy else "[red]down[/]",
                  s.detail)
    out.print(t)
    return ok


def main() -> None:
    app()
