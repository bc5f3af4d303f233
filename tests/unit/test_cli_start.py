"""`python -m workers --help` starts fast: the typer app imports what a command needs only when
the command runs (issue 28). Measured by what gets imported, never by wall time: each heavy
module below costs tens of milliseconds of process time to load here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

# What --help must not load: the data stack, the clients, the settings machinery.
HEAVY = ("pyarrow", "numpy", "boto3", "botocore", "psycopg", "pgvector", "websockets",
         "structlog", "pydantic_settings", "httpx", "matplotlib", "tenacity",
         "workers.core.settings", "workers.app.context", "workers.app.operations")

COMMANDS = ("migrate", "ingest", "fetch", "stream", "replicate", "landing", "repair", "embed",
            "similar", "retention", "backup", "restore", "up")


def imported(*args: str) -> set[str]:
    """Every module `python -X importtime -m workers ARGS` imports (it must exit 0)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "workers", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Usage" in r.stdout
    return {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY)


def test_help_imports_no_heavy_module():
    mods = imported("--help")
    assert "typer" in mods  # the parse did happen: the list is real
    assert heavy(mods) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_commands_help_imports_no_heavy_module(command):
    assert heavy(imported(command, "--help")) == []


def test_the_check_notices_a_heavy_import():
    assert heavy({"typer", "pyarrow.lib", "workers.core.settings", "rich"}) == [
        "pyarrow.lib", "workers.core.settings"]


def test_every_worker_module_imports():
    """Imports moved into functions for the fast start: every module still imports, so a name
    one module takes from another (a re-export that moved) fails here, not in production."""
    import importlib

    failed = {}
    for path in sorted((REPO / "workers").rglob("*.py")):
        if path.name == "__main__.py":
            continue
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - every failure is reported, by module
            failed[module] = repr(e)
    assert failed == {}
