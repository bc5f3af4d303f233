"""The one output function of the CLI: a result (workers/app/results.py) printed and turned
into its exit code."""

from __future__ import annotations

import json

import typer

from workers.app.results import Result
from workers.core.errors import EXIT_FAILED


def text_of(result: Result) -> list:
    """What a result prints without --json: its own lines, else its summary and details."""
    lines = getattr(result, "lines", None)
    if lines is not None:
        return list(lines())
    return [result.summary(), *getattr(result, "details", list)()]


def json_of(result: Result):
    to_json = getattr(result, "to_json", None)
    return to_json() if to_json is not None else result.as_dict()


def exit_code(result: Result) -> int:
    """The result's own exit code when it has one; else 0, or 1 when it says it is not ok."""
    code = getattr(result, "exit_code", None)
    if isinstance(code, int):
        return code
    return 0 if getattr(result, "ok", True) else EXIT_FAILED


def show(result: Result, json_out: bool = False) -> int:
    """Print `result` — its warnings on stderr, then its JSON or its text lines (a rich
    renderable among them, such as a table, printed by rich) — and give its exit code. A
    result whose JSON is None prints none (it was shown as it went)."""
    for line in getattr(result, "warnings", list)():
        typer.echo(line, err=True)
    if json_out:
        data = json_of(result)
        if data is not None:
            typer.echo(json.dumps(data, default=str))
        return exit_code(result)
    console = None
    for line in text_of(result):
        if isinstance(line, str):
            typer.echo(line)
            continue
        if console is None:
            from rich.console import Console

            console = Console()
        console.print(line)
    return exit_code(result)


def emit(result: Result, json_out: bool = False) -> None:
    """`show`, then leave with the result's exit code when it is not 0."""
    code = show(result, json_out)
    if code:
        raise typer.Exit(code)
