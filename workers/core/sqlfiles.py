"""SQL text that ships with the package, found through importlib.resources (never a path
outside the package once installed).

The rule: every SQL statement a worker runs lives in a named file `<folder>/sql/<name>.sql`
of the package whose module runs it, loaded by name with `query(__package__, "<name>")`;
schema changes are numbered migrations in the repository's `sql/` (installed as the package
data `workers/migrations/`, see pyproject.toml). A statement that needs identifiers or
server-side literals (a table name, `SET` values, a role) keeps its template in the file and
composes them with psycopg.sql: `template(__package__, "<name>").format(sql.Identifier(...))`.
No statement is too short for a file (`SELECT 1`, `SET LOCAL ...` too): one place to read every
statement, and tests/unit/test_sql_rule.py can tell SQL in Python from none. That test fails on
SQL in a Python string, on a file no module loads, and on a name loaded that has no file.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import sql


def migrations_dir() -> Path:
    """The numbered migrations: inside the installed package (wheel, image), or the repository's
    `sql/` when the package runs from a source checkout."""
    installed = resources.files("workers") / "migrations"
    if installed.is_dir():
        return Path(str(installed))
    return Path(str(resources.files("workers"))).parent / "sql"


@cache
def query(package: str, name: str) -> str:
    """The query `<package>/sql/<name>.sql`, e.g. query("workers.db", "upsert_registry")."""
    path = resources.files(package) / "sql" / f"{name}.sql"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"query file {package.replace('.', '/')}/sql/{name}.sql is missing (loaded as "
            f"query({package!r}, {name!r}); is the package installed with its sql/ data?)"
        ) from None


def template(package: str, name: str) -> sql.SQL:
    """The query file as a psycopg.sql template, for `.format(...)` with identifiers or
    literals the statement cannot take as parameters."""
    from psycopg import sql

    return sql.SQL(query(package, name))
