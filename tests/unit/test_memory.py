"""The worker process takes Arrow's memory from glibc's heap (workers/core/memory.py)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from tests.conftest import REPO

PROBE = ("import pyarrow as pa, pyarrow.parquet as pq, io; "
         "pq.write_table(pa.table({'x': list(range(1000))}), io.BytesIO()); "
         "print(pa.default_memory_pool().backend_name)")


def backend(setup: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    r = subprocess.run([sys.executable, "-c", setup + PROBE], cwd=REPO, env=env,
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


def test_choose_arrow_pool_makes_arrow_allocate_from_the_system_heap():
    assert backend("") != "system"  # Arrow's own default: the check below can fail
    assert backend("from workers.core.memory import choose_arrow_pool; "
                   "choose_arrow_pool(); ") == "system"


def test_choose_arrow_pool_refuses_to_run_after_pyarrow_is_loaded():
    r = subprocess.run([sys.executable, "-c", "import pyarrow; from workers.core.memory "
                        "import choose_arrow_pool; choose_arrow_pool()"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "before pyarrow is imported" in r.stderr


def test_the_workers_entry_point_chooses_the_pool_before_importing_the_app():
    tree = ast.parse((REPO / "workers" / "__main__.py").read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    order = [n.lineno for n in ast.walk(main) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "choose_arrow_pool"]
    app_import = [n.lineno for n in ast.walk(main) if isinstance(n, ast.ImportFrom)
                  and n.module == "workers.app.cli"]
    assert order and app_import and order[0] < app_import[0]
