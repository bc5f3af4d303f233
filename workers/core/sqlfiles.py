"""SQL text that ships with the package, found through importlib.resources (never a path
outside the package once installed).

The rule: DDL is a numbered migration in the repository's `sql/` (installed as the package data
`workers/migrations/`, see pyproject.toml); a query of more than one line lives in a named file
`<folder>/sql/<name>.sql` beside the module that runs it; one-line statements stay inline.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path


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
    return (resources.files(package) / "sql" / f"{name}.sql").read_text(encoding="utf-8")
