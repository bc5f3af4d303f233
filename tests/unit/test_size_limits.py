"""Size limits that hold: no Python module of the repository over 450 lines, no function or
method over 80 lines.

Every tracked .py file counts (workers, infra, bench, tests, scripts): a limit that skips a folder
lets that folder slip, which is how ingest.py reached 585 lines. A function's size is its `def`
line to its last line (AST `end_lineno - lineno + 1`; decorators are not counted, a nested
function counts inside its parent too).

An entry in ALLOWED needs a reason a reviewer accepts: a table of data, not a long procedure.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from tests.conftest import REPO

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80

# "path" (a module) or "path::qualified.name" (a function) -> why it may exceed the limit.
ALLOWED: dict[str, str] = {}


def python_files(root: Path) -> list[Path]:
    """The repository's tracked .py files (git's list, so .venv, build/ and caches never count);
    a tree without git falls back to every .py outside hidden and generated folders."""
    r = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--", "*.py"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode == 0 and r.stdout:
        return sorted(root / name for name in r.stdout.split("\0") if name
                      and (root / name).is_file())
    skip = {".venv", "build", "dist", "__pycache__", "node_modules"}
    return sorted(p for p in root.rglob("*.py")
                  if not any(part in skip or part.startswith(".")
                             for part in p.relative_to(root).parts[:-1]))


def functions_of(tree: ast.AST):
    """(qualified name, def line, size in lines) of every function and method, at any depth."""
    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                yield name, child.lineno, child.end_lineno - child.lineno + 1
                yield from walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


def oversized(root: Path, files: list[Path], allowed: dict[str, str]) -> list[str]:
    """One line per module or function over its limit, as `path:line: what (size)`."""
    found = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and rel not in allowed:
            found.append(f"{rel}:1: module has {lines} lines (limit {MAX_MODULE_LINES})")
        for name, line, size in functions_of(ast.parse(text, rel)):
            if size > MAX_FUNCTION_LINES and f"{rel}::{name}" not in allowed:
                found.append(f"{rel}:{line}: {name} has {size} lines "
                             f"(limit {MAX_FUNCTION_LINES})")
    return found


def test_no_module_or_function_is_over_its_limit():
    problems = oversized(REPO, python_files(REPO), ALLOWED)
    assert problems == [], "split along a real seam:\n" + "\n".join(problems)


def test_every_allowance_names_something_that_still_needs_it():
    """An allow-list entry outlives its reason unless it is removed once the code fits."""
    stale = [key for key in ALLOWED
             if not (REPO / key.split("::")[0]).is_file()
             or key not in _keys_over(REPO / key.split("::")[0])]
    assert stale == []
    assert all(reason.strip() for reason in ALLOWED.values())


def _keys_over(path: Path) -> list[str]:
    rel = path.relative_to(REPO).as_posix()
    text = path.read_text(encoding="utf-8")
    keys = [rel] if len(text.splitlines()) > MAX_MODULE_LINES else []
    keys += [f"{rel}::{name}" for name, _, size in functions_of(ast.parse(text, rel))
             if size > MAX_FUNCTION_LINES]
    return keys


def _function(name: str, body_lines: int, decorators: int = 0) -> str:
    return ("@staticmethod\n" * decorators + f"def {name}():\n"
            + "    x = 1\n" * body_lines)


def test_the_checker_catches_an_oversized_module_and_function(tmp_path):
    (tmp_path / "pkg").mkdir()
    big = tmp_path / "pkg" / "big.py"
    big.write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "pkg" / "fits.py").write_text("x = 1\n" * MAX_MODULE_LINES)  # at the limit
    long_fn = tmp_path / "pkg" / "long_fn.py"
    long_fn.write_text("import os\n\n\nclass C:\n    " + _function(
        "run", MAX_FUNCTION_LINES).replace("\n", "\n    ").rstrip() + "\n\n\n"
        + _function("ok", MAX_FUNCTION_LINES - 1, decorators=3))
    files = python_files(tmp_path)
    assert [p.name for p in files] == ["big.py", "fits.py", "long_fn.py"]
    assert oversized(tmp_path, files, {}) == [
        f"pkg/big.py:1: module has {MAX_MODULE_LINES + 1} lines (limit {MAX_MODULE_LINES})",
        f"pkg/long_fn.py:5: C.run has {MAX_FUNCTION_LINES + 1} lines "
        f"(limit {MAX_FUNCTION_LINES})"]
    assert oversized(tmp_path, files, {"pkg/big.py": "data",
                                       "pkg/long_fn.py::C.run": "data"}) == []


def test_a_nested_function_is_named_by_its_parents(tmp_path):
    inner = "    " + _function("inner", MAX_FUNCTION_LINES + 5).replace("\n", "\n    ")
    (tmp_path / "m.py").write_text("def outer():\n" + inner.rstrip() + "\n    return inner\n")
    assert oversized(tmp_path, [tmp_path / "m.py"], {}) == [
        f"m.py:1: outer has {MAX_FUNCTION_LINES + 8} lines (limit {MAX_FUNCTION_LINES})",
        f"m.py:2: outer.inner has {MAX_FUNCTION_LINES + 6} lines (limit {MAX_FUNCTION_LINES})"]
