"""A rerun of `workers ingest` over a file loaded before starts fast (issue 28): it asks the
database and lists landing, and never loads the data stack (pyarrow, numpy) — measured by what
the process imports (`-X importtime`), never by wall time."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.integration.pipeline import Stack

DAY = "BTCUSDT-trades-2019-04-01"
DATA_STACK = ("pyarrow", "numpy", "matplotlib", "pgvector", "websockets")


@pytest.fixture
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


def ingest(stack: Stack, path, *extra: str) -> tuple[dict, set[str], float]:
    """`python -X importtime -m workers ingest PATH --json`: its summary, the modules it
    imported, and its process time (user + system, seconds: reported, not asserted)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "workers", "ingest",
                        str(path), "--json", *extra], cwd=REPO, env=stack.cli_env(),
                       capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stderr[-3000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(r.stdout.splitlines()[-1]), modules, cpu


def loaded(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in DATA_STACK)


def test_a_skipped_reingest_never_loads_the_data_stack(stack, shared_data, tmp_path):
    part = tmp_path / f"{DAY}.csv"
    part.write_text("".join((shared_data / f"{DAY}.csv").read_text()
                            .splitlines(keepends=True)[:2_000]))
    first, modules, cpu_first = ingest(stack, part)
    assert first["files_skipped"] == 0 and first["accepted"] == 2_000
    assert "pyarrow" in modules and "numpy" in modules  # the check sees a real load
    again, modules, cpu_again = ingest(stack, part)
    assert again["files_skipped"] == 1 and again["rows_read"] == 0
    assert "psycopg" in modules and "workers.db.file_loads" in modules  # it asked the database
    assert loaded(modules) == []
    print(f"process time: first load {cpu_first:.2f} s, skipped rerun {cpu_again:.2f} s")
    forced, modules, _ = ingest(stack, part, "--force")  # --force still loads it all
    assert forced["files_skipped"] == 0 and forced["rows_read"] == 2_000
    assert "pyarrow" in modules
