"""The SQL rule (workers/core/sqlfiles.py): every statement a worker runs is a named file in its
package's sql/ folder, loaded by name; none is a string in Python.

* No string literal under workers/ reads like an SQL statement (f-strings included), and no
  psycopg `sql.SQL("...")` carries SQL words: a composed statement's template is a file too.
* Every workers/*/sql/*.sql file is loaded by some module (no orphan), and every name a module
  loads has its file.
* infra/ (the local environment's one-line admin statements through `psql -c`) may keep a
  one-line statement inline; a multi-line one goes to a sql/ folder of its package.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from workers.core import sqlfiles

LOADERS = {"query", "template"}  # the functions of workers.core.sqlfiles that load a file

STATEMENT = re.compile(r"""^\s*(?:
    SELECT\s+(?:DISTINCT\s+|NOT\s+)?(?:[\d*(%'"]|[\w.]+\s*\(|(?s:.*)\bFROM\s)
  | INSERT\s+INTO\b
  | UPDATE\s+[\w."]+\s+SET\b
  | DELETE\s+FROM\b
  | MERGE\s+INTO\b
  | WITH\s+(?:RECURSIVE\s+)?\w+\s*(?:\([^)]*\)\s*)?AS\s+(?:NOT\s+)?(?:MATERIALIZED\s+)?\(
  | (?:CREATE|ALTER|DROP|COMMENT\s+ON)\s+
      (?:OR\s+REPLACE\s+|TEMP(?:ORARY)?\s+|UNIQUE\s+|UNLOGGED\s+|MATERIALIZED\s+)*
      (?:TABLE|INDEX|VIEW|DATABASE|EXTENSION|ROLE|USER|SCHEMA|FUNCTION|PROCEDURE|TRIGGER
        |SEQUENCE|TYPE|POLICY|PUBLICATION|SUBSCRIPTION|SYSTEM|DEFAULT|COLUMN)\b
  | (?:GRANT|REVOKE)\s+[\w\s,]+?\s(?:ON|TO|FROM)\s
  | COPY\s*\(
  | COPY\s+[\w."]+\s*(?:\(|FROM\b|TO\b)
  | TRUNCATE\s+(?:TABLE\s+)?[\w."]+
  | CALL\s+[\w."]+\s*\(
  | DO\s+(?:LANGUAGE\s+\w+\s+)?\$
  | SET\s+(?:LOCAL\s+|SESSION\s+)?(?:ROLE\s|[\w.]+\s*(?:=|TO\s))
  | RESET\s+(?:ROLE|ALL|[\w.]+)\s*;?\s*$
  | SHOW\s+[\w.]+\s*;?\s*$
  | (?:BEGIN|COMMIT|ROLLBACK|CHECKPOINT|START\s+TRANSACTION)\s*;?\s*$
  | (?:VACUUM|REINDEX|LOCK\s+TABLE|REFRESH\s+MATERIALIZED\s+VIEW|EXPLAIN\s+(?:\(|ANALYZE|SELECT))
)""", re.I | re.X)
FORMAT_FIELD = re.compile(r"\{[^{}]*\}")


def reads_like_sql(text: str) -> bool:
    """An SQL statement (str.format / psycopg.sql fields read as identifiers)."""
    return bool(STATEMENT.match(FORMAT_FIELD.sub("x", text)))


def _bare_strings(tree: ast.AST) -> set[int]:
    """Docstrings and other strings that are a statement of their own (never run)."""
    return {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}


def _is_sql_composable(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "SQL"
            and isinstance(f.value, ast.Name) and f.value.id == "sql")


def sql_in_python(path: Path, *, multiline_only: bool = False) -> list[str]:
    """`file:line: text` of every string literal of `path` that is SQL."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _bare_strings(tree)
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):  # its pieces are judged as the whole f-string
            skip.update(id(v) for v in n.values)
    out = []
    rel = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        text = None
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            text = n.value
        elif isinstance(n, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in n.values)
        elif (isinstance(n, ast.Call) and _is_sql_composable(n) and n.args
              and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)
              and re.search(r"[A-Za-z]", n.args[0].value)):
            skip.add(id(n.args[0]))
            if multiline_only and "\n" not in n.args[0].value.strip():
                continue
            out.append(f"{rel}:{n.lineno}: sql.SQL({n.args[0].value.strip()[:70]!r})")
            continue
        if text is None or not reads_like_sql(text):
            continue
        if multiline_only and "\n" not in text.strip():
            continue
        out.append(f"{rel}:{n.lineno}: {' '.join(text.split())[:70]!r}")
    return out


def test_no_sql_statement_is_a_python_string_in_workers():
    found = []
    for path in sorted((REPO / "workers").rglob("*.py")):
        found += sql_in_python(path)
    assert found == [], ("SQL in Python (move it to a named file in the package's sql/ folder "
                         "and load it by name, workers/core/sqlfiles.py):\n  "
                         + "\n  ".join(sorted(set(found))))


def test_infra_runs_no_multiline_sql_from_python():
    found = []
    for path in sorted((REPO / "infra").rglob("*.py")):
        found += sql_in_python(path, multiline_only=True)
    assert found == [], ("multi-line SQL in infra/ Python (a sql/ folder of its package):\n  "
                         + "\n  ".join(found))


@pytest.mark.parametrize("text", [
    "SELECT 1", "select max(bucket) FROM t WHERE a = %s", "\n  SELECT x\n  FROM y",
    "INSERT INTO t VALUES (%s)", "UPDATE signals.e SET a = %s", "DELETE FROM t",
    "WITH a AS (SELECT 1) SELECT * FROM a", "CREATE TEMP TABLE IF NOT EXISTS s (a int)",
    "CREATE DATABASE {}", "ALTER EXTENSION timescaledb UPDATE", "DROP INDEX x",
    "GRANT {} TO {}", "GRANT pg_monitor, pg_signal_backend TO x", "COPY {} ({}) FROM STDIN",
    "COPY (SELECT 1) TO STDOUT", "TRUNCATE t", "CALL p(1)", "DO $$ BEGIN END $$",
    "SET LOCAL TimeZone = 'UTC'", "SET ROLE {}", "set statement_timeout = {}",
    "SET ivfflat.probes = {}; SET x = 1", "RESET ROLE", "RESET lock_timeout", "SHOW config_file",
    "BEGIN", "COMMIT;",
])
def test_statements_are_recognised(text):
    assert reads_like_sql(text)


@pytest.mark.parametrize("text", [
    "select a file to ingest", "fetch", "Delete these keys (1,000 per request).",
    "with a known next hour", "do not give the registered bytes", "set -o pipefail; d=$(x)",
    "update", "CREATE", "SELECT", "create the bucket", "drop", "grant on {}/{}: actions",
    "copy the object", "show the plan", "begin at the start", "reset the counter now",
])
def test_prose_is_not_sql(text):
    assert not reads_like_sql(text)


def test_the_check_names_file_and_line(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text('"""SELECT in a docstring is prose."""\n'
                   'from psycopg import sql\n'
                   'def f(c, t):\n'
                   '    c.execute("SELECT 1")\n'
                   '    c.execute(f"SET lock_timeout = {t}")\n'
                   '    c.execute(sql.SQL("{} ROLE {}").format(t, t))\n'
                   '    c.execute(sql.SQL(", ").join([t]))\n')
    found = sql_in_python(mod)
    assert [f.split(": ")[0].rsplit(":", 1)[1] for f in found] == ["4", "5", "6"], found
    assert sql_in_python(mod, multiline_only=True) == []
    mod.write_text('q = """\nSELECT a\nFROM b\n"""\n')
    assert len(sql_in_python(mod, multiline_only=True)) == 1


# --- the files and the names loaded --------------------------------------------------------


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])


def loads(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, package, name pattern or None when not a literal) of every query-file load."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module == "workers.core.sqlfiles":
            names.update(a.asname or a.name for a in n.names if a.name in LOADERS)
    if path.relative_to(REPO).as_posix() == "workers/core/sqlfiles.py":
        names |= LOADERS
    out = []
    for n in ast.walk(tree):
        if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                and n.func.id in names and len(n.args) == 2):
            continue
        pkg_arg, name_arg = n.args
        if isinstance(pkg_arg, ast.Name) and pkg_arg.id == "__package__":
            pkg = package_of(path)
        elif isinstance(pkg_arg, ast.Constant) and isinstance(pkg_arg.value, str):
            pkg = pkg_arg.value
        else:
            if path.name == "sqlfiles.py":
                continue  # the loader's own calls between its functions
            out.append((n.lineno, "?", None))
            continue
        if isinstance(name_arg, ast.Constant) and isinstance(name_arg.value, str):
            out.append((n.lineno, pkg, name_arg.value))
        elif isinstance(name_arg, ast.JoinedStr):  # f"{kind}_days": a pattern
            out.append((n.lineno, pkg, "".join(
                v.value if isinstance(v, ast.Constant) else "*" for v in name_arg.values)))
        else:
            out.append((n.lineno, pkg, None))
    return out


def all_loads() -> list[tuple[str, int, str, str | None]]:
    return [(p.relative_to(REPO).as_posix(), line, pkg, name)
            for p in sorted((REPO / "workers").rglob("*.py")) for line, pkg, name in loads(p)]


def query_files() -> dict[str, list[str]]:
    """{package: [names]} of every workers/*/sql/*.sql."""
    out: dict[str, list[str]] = {}
    for f in sorted((REPO / "workers").glob("*/sql/*.sql")):
        out.setdefault(f"workers.{f.parent.parent.name}", []).append(f.stem)
    return out


def test_the_loads_are_found():
    found = all_loads()
    assert len(found) > 50 and {pkg for _, _, pkg, _ in found} >= {
        "workers.core", "workers.db", "workers.replica", "workers.signals", "workers.ops"}


def test_every_name_loaded_has_its_file_and_is_a_literal():
    files = query_files()
    bad = []
    for rel, line, pkg, name in all_loads():
        if name is None:
            bad.append(f"{rel}:{line}: the query's package and name must be literals "
                       "(__package__ and a string or f-string) so this test can check them")
        elif not fnmatch.filter(files.get(pkg, []), name):
            bad.append(f"{rel}:{line}: {pkg.replace('.', '/')}/sql/{name}.sql does not exist")
    assert bad == [], "\n  ".join(["query files loaded but missing:", *bad])


def test_every_query_file_is_loaded():
    used: dict[str, list[str]] = {}
    for _, _, pkg, name in all_loads():
        if name is not None:
            used.setdefault(pkg, []).append(name)
    orphans = [f"workers/{pkg.split('.')[1]}/sql/{name}.sql"
               for pkg, names in query_files().items() for name in names
               if not any(fnmatch.fnmatchcase(name, pat) for pat in used.get(pkg, []))]
    assert orphans == [], "query files no module loads (delete them or load them):\n  " + \
        "\n  ".join(orphans)


def test_a_missing_query_file_is_named():
    with pytest.raises(FileNotFoundError, match=r"workers/db/sql/no_such_query\.sql"):
        sqlfiles.query("workers.db", "no_such_query")
