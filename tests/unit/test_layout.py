"""The layout's rules, read from the code's own imports, and the contracts that must exist once.

* workers/ folders in data order: a module imports only its own folder or folders below it
  (core < sources < landing < db < replica < signals < ops < app).
* Nothing under workers/ imports infra (the worker image carries no infra/).
* The Pulumi program never imports the offline tooling (infra/offline) or the local environment.
* The worker roles: sql/002_roles.sql, the migrate worker's list and the renderer's logins agree,
  and every login's DSN setting is a field of the workers' Settings.
* pyproject.toml lists every package (it lists them explicitly to map sql/ into the package).
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from infra import configs
from tests.conftest import REPO
from workers.core.settings import Settings
from workers.db import migrate

ORDER = ["core", "sources", "landing", "db", "replica", "signals", "ops", "app"]


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth of the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def modules(root: str) -> list[Path]:
    return sorted((REPO / root).rglob("*.py"))


def folder_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "workers" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ORDER else None


def test_every_worker_module_sits_in_a_data_order_folder():
    loose = [p.relative_to(REPO).as_posix() for p in (REPO / "workers").glob("*.py")
             if p.name not in ("__init__.py", "__main__.py")]
    assert loose == [], "modules directly under workers/ (put them in a folder): " + str(loose)
    folders = {p.name for p in (REPO / "workers").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(ORDER)


def upward_imports(root: Path) -> list[str]:
    """Imports of a folder above the importing module's own, in the workers tree at `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if len(rel) < 2 or rel[0] not in ORDER:
            continue
        own = ORDER.index(rel[0])
        for mod in sorted(imports_of(path)):
            f = folder_of(mod)
            if f is not None and ORDER.index(f) > own:
                found.append(f"{'/'.join(rel)} imports {mod} ({f} is above {rel[0]})")
    return found


def test_worker_imports_run_only_downward():
    assert upward_imports(REPO / "workers") == []


def test_the_direction_rule_notices_an_upward_import(tmp_path):
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "load.py").write_text("def f():\n    from workers.ops import retention\n")
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "backup.py").write_text("from workers.db.load import f\n")
    assert upward_imports(tmp_path) == [
        "db/load.py imports workers.ops (ops is above db)",
        "db/load.py imports workers.ops.retention (ops is above db)"]


def test_workers_never_import_infra():
    offenders = [f"{p.relative_to(REPO)}: {m}" for p in modules("workers")
                 for m in imports_of(p) if m == "infra" or m.startswith("infra.")]
    assert offenders == []


def test_the_pulumi_program_never_imports_offline_tooling_or_the_local_environment():
    program = [REPO / "infra" / "__main__.py", REPO / "infra" / "program.py",
               REPO / "infra" / "configs.py", REPO / "infra" / "stack_config.py",
               *modules("infra/components")]
    offenders = [f"{p.relative_to(REPO)}: {m}" for p in program for m in imports_of(p)
                 if m.startswith(("infra.offline", "infra.local")) or m in (
                     "infra.render", "infra.mocking", "infra.diff")]
    assert offenders == []
    assert not (REPO / "infra" / "mocking.py").exists()
    assert not (REPO / "infra" / "diff.py").exists()


def roles_in_sql() -> set[str]:
    """Group roles the migrations create: each file that creates roles lists them in one
    ARRAY[...] (002_roles.sql, 015_replicate_backup_roles.sql)."""
    out: set[str] = set()
    for path in sorted((REPO / "sql").glob("0*.sql")):
        text = path.read_text()
        if "CREATE ROLE %I NOLOGIN" not in text:
            continue
        array = re.search(r"ARRAY\[([^\]]+)\]", text)
        assert array, f"{path.name} no longer lists its roles in one ARRAY[...]"
        out |= {r.strip().strip("'") for r in array.group(1).replace("\n", " ").split(",")}
    assert "tickstack_migrator" in out
    return out


def test_worker_roles_agree_between_sql_migrate_and_the_renderer():
    sql_roles = roles_in_sql() - {migrate.MIGRATOR_ROLE}
    assert sql_roles == set(migrate.WORKER_ROLES) == set(configs.WORKER_LOGINS)


def test_every_login_dsn_setting_is_a_workers_setting():
    fields = {f"TICKSTACK_{name.upper()}" for name in Settings.model_fields}
    for group in configs.WORKER_LOGINS:
        assert configs.dsn_env_key(group) in fields, group


@pytest.mark.parametrize("root", ["workers", "infra"])
def test_pyproject_lists_every_package(root):
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {p.parent.relative_to(REPO).as_posix().replace("/", ".")
             for p in (REPO / root).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_migrations_are_found_inside_an_installed_package(tmp_path):
    """An installed wheel carries sql/ as workers/migrations/; the resolver uses it there."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the source
    for part in ("workers", "infra", "sql"):
        shutil.copytree(REPO / part, src / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, src / part)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("tickstack-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    names = sorted(p.name for p in (site / "workers" / "migrations").glob("*.sql"))
    assert names == sorted(p.name for p in (REPO / "sql").glob("*.sql"))
    # ...and every package's named queries (workers/<folder>/sql/*.sql, core's included).
    queries = sorted(p.relative_to(site).as_posix() for p in site.glob("workers/*/sql/*.sql"))
    assert queries == sorted(p.relative_to(REPO).as_posix()
                             for p in REPO.glob("workers/*/sql/*.sql"))
    found = subprocess.run(
        [sys.executable, "-c", "from workers.core.sqlfiles import migrations_dir; "
         "print(migrations_dir())"], cwd=tmp_path, env={"PYTHONPATH": str(site)},
        capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == site / "workers" / "migrations"


def test_no_import_cycle_inside_workers():
    """No two worker modules import each other, directly or around a loop, at any depth of the
    file (a function-level import closes a cycle too; imports for type checkers only do not).
    `workers/app/report.py` and `up.py` once did."""
    import graphlib

    def runtime_imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test)
                       for stmt in node.body for n in ast.walk(stmt)}
        out: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
        return out

    def cycle_in(graph: dict[str, set[str]]) -> list[str]:
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as e:
            return e.args[1]
        return []

    assert len(cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == 4  # a loop
    names = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (REPO / "workers").rglob("*.py")}
    graph = {mod: {m for m in runtime_imports(path) if m in names and m != mod}
             for mod, path in names.items()}
    cycle = cycle_in(graph)
    assert cycle == [], "import cycle: " + " -> ".join(cycle)
