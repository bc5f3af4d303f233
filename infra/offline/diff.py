"""Offline preview diff: the resource graph at a git ref vs. the working tree, as Markdown.

`python -m infra.render --stack dev --diff-against origin/main` renders the Pulumi program twice
under mocks (infra/offline/render.py) — once as it is at the ref, once as it is now — and
lists what a `pulumi preview` would show at resource level: resources added, removed, and
changed inputs (old → new), plus changed stack outputs. Secrets are masked on both sides
("[secret]"), as the render prints them. CI posts this on pull requests that have no cloud
credentials (forks).

The ref's program is extracted with `git archive` into a temporary directory and rendered there
by a subprocess of the same interpreter (same virtualenv, same provider SDKs), with that
directory first on the import path, so the ref's own `infra/` (and stack files) are used.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SECRET = "[secret]"
MARKER = "<!-- tickstack-infra-diff:{stack} -->"  # lets CI update its comment in place
MAX_CELL = 160


class DiffError(Exception):
    """The ref cannot be resolved or its program cannot be rendered; the message says why."""


# --- rendering a tree ----------------------------------------------------------------------------


def _git(repo: Path, *args: str, binary: bool = False) -> Any:
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=120,
                       text=not binary)
    if r.returncode != 0:
        err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode(errors="replace")
        raise DiffError(f"git {' '.join(args[:2])}: {err.strip() or 'failed'}")
    return r.stdout


def resolve(ref: str, repo: Path = REPO) -> str:
    """The commit a ref names (DiffError if it names none)."""
    return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()


def extract(ref: str, dest: Path, repo: Path = REPO) -> str:
    """Write the tree of `ref` into `dest` (git archive); returns the commit."""
    commit = resolve(ref, repo)
    data = _git(repo, "archive", "--format=tar", commit, binary=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return commit


def render_tree(root: Path, stack: str, args: Sequence[str] = (),
                python: str = sys.executable) -> dict:
    """`python -m infra.render --stack S` run in `root`, its own infra/ first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PULUMI_CONFIG", None)
    r = subprocess.run([python, "-m", "infra.render", "--stack", stack, *args], cwd=root,
                       env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise DiffError(f"rendering {stack} in {root} failed (exit {r.returncode}):\n{tail}")
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise DiffError(f"rendering {stack} in {root} printed no JSON graph: {e}") from None


def render_at(ref: str, stack: str, args: Sequence[str] = (), repo: Path = REPO) -> dict:
    with tempfile.TemporaryDirectory(prefix="tickstack-diff-") as tmp:
        extract(ref, Path(tmp), repo)
        if not (Path(tmp) / "infra" / "render.py").exists():
            raise DiffError(f"{ref} has no infra/render.py: nothing to render there")
        if not (Path(tmp) / f"Pulumi.{stack}.yaml").exists():
            return {"stack": stack, "resources": [], "outputs": {}}  # the stack is new
        return render_tree(Path(tmp), stack, args)


# --- comparing two graphs ------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf paths of a value: `a.b[0].c` -> leaf. JSON documents held in strings (IAM and
    bucket policies) are opened up too, so a change shows as the statement that changed."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict | list) and parsed:
            return flatten(parsed, f"{prefix}(json)")
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


@dataclass
class Change:
    path: str
    before: Any  # MISSING when added
    after: Any  # MISSING when removed


MISSING = object()


@dataclass
class Changed:
    type: str
    name: str
    changes: list[Change]


@dataclass
class GraphDiff:
    stack: str
    added: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    changed: list[Changed] = field(default_factory=list)
    outputs: list[Change] = field(default_factory=list)
    before_count: int = 0
    after_count: int = 0

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.outputs)


def _comparable(r: dict) -> dict:
    return {"inputs": r.get("inputs") or {}, "parent": r.get("parent"),
            "protect": r.get("protect", False), "dependsOn": sorted(r.get("dependsOn") or [])}


def _changes(before: Any, after: Any) -> list[Change]:
    a, b = flatten(before), flatten(after)
    out = []
    for path in sorted(set(a) | set(b)):
        x, y = a.get(path, MISSING), b.get(path, MISSING)
        if x != y:
            out.append(Change(path, x, y))
    return out


def diff_graphs(before: dict, after: dict) -> GraphDiff:
    """Resource-level difference, resources matched by (type, name) as Pulumi matches URNs."""
    key = lambda r: (r["type"], r["name"])  # noqa: E731
    old = {key(r): r for r in before.get("resources", [])}
    new = {key(r): r for r in after.get("resources", [])}
    d = GraphDiff(stack=after.get("stack") or before.get("stack", "?"),
                  before_count=len(old), after_count=len(new))
    d.added = [new[k] for k in sorted(set(new) - set(old))]
    d.removed = [old[k] for k in sorted(set(old) - set(new))]
    for k in sorted(set(old) & set(new)):
        changes = _changes(_comparable(old[k]), _comparable(new[k]))
        for c in changes:  # inputs are what a change is mostly about: show them bare
            c.path = c.path.removeprefix("inputs.")
        if changes:
            d.changed.append(Changed(k[0], k[1], changes))
    d.outputs = _changes(before.get("outputs") or {}, after.get("outputs") or {})
    return d


# --- Markdown ----------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is MISSING:
        return "—"
    text = v if isinstance(v, str) else json.dumps(v)
    if len(text) > MAX_CELL:
        text = text[:MAX_CELL] + "…"
    text = text.replace("|", "\\|").replace("\n", "⏎").replace("`", "'")
    return f"`{text}`"


def _multiline(c: Change) -> bool:
    return any(isinstance(v, str) and "\n" in v for v in (c.before, c.after))


def _change_block(changes: list[Change], what: str = "Input") -> list[str]:
    lines: list[str] = []
    rows = [c for c in changes if not _multiline(c)]
    if rows:
        lines += [f"| {what} | Before | After |", "|---|---|---|"]
        lines += [f"| `{c.path}` | {_cell(c.before)} | {_cell(c.after)} |" for c in rows]
        lines.append("")
    for c in (c for c in changes if _multiline(c)):
        old = "" if c.before is MISSING else str(c.before)
        new = "" if c.after is MISSING else str(c.after)
        body = difflib.unified_diff(old.splitlines(), new.splitlines(), "before", "after",
                                    lineterm="", n=2)
        lines += [f"`{c.path}`:", "", "```diff", *list(body)[2:], "```", ""]
    return lines


def _inputs_block(r: dict) -> list[str]:
    text = json.dumps(r.get("inputs") or {}, indent=2, sort_keys=True)
    return ["<details><summary>inputs</summary>", "", "```json", text, "```", "", "</details>",
            ""]


def to_markdown(d: GraphDiff, *, before_label: str, after_label: str = "working tree") -> str:
    lines = [MARKER.format(stack=d.stack),
             f"### Infrastructure diff — stack `{d.stack}`",
             "",
             f"`{before_label}` → `{after_label}`, rendered offline under Pulumi mocks "
             f"(`python -m infra.render --diff-against`); secrets shown as `{SECRET}`.",
             ""]
    if d.empty:
        lines += ["**No changes.** The program declares the same resources with the same "
                  "inputs.", ""]
        return "\n".join(lines)
    lines += [f"**{len(d.added)} to add, {len(d.changed)} to change, {len(d.removed)} to "
              f"delete** ({d.before_count} → {d.after_count} resources)", ""]
    if d.added:
        lines += ["#### ➕ Added", ""]
        for r in d.added:
            lines += [f"- `{r['type']}` **{r['name']}**"
                      + (f" (parent `{r['parent']}`)" if r.get("parent") else ""), ""]
            lines += _inputs_block(r)
    if d.removed:
        lines += ["#### ➖ Removed", ""]
        lines += [f"- `{r['type']}` **{r['name']}**"
                  + ("  ⚠️ protected" if r.get("protect") else "") for r in d.removed]
        lines.append("")
    if d.changed:
        lines += ["#### ✏️ Changed", ""]
        for c in d.changed:
            lines += [f"**`{c.type}` {c.name}**", ""]
            lines += _change_block(c.changes)
    if d.outputs:
        lines += ["#### Stack outputs", ""]
        lines += _change_block(d.outputs, "Output")
    return "\n".join(lines).rstrip() + "\n"


def diff_against(ref: str, stack: str, args: Sequence[str] = (), repo: Path = REPO,
                 root: Path | None = None) -> str:
    """Markdown diff of the stack's graph: `ref` vs. the working tree at `root` (default: the
    repository). `args` are extra infra.render options given to both sides (e.g. --set)."""
    commit = resolve(ref, repo)
    before = render_at(commit, stack, args, repo)
    after = render_tree(root or repo, stack, args)
    label = ref if ref.startswith(commit[:7]) else f"{ref} ({commit[:7]})"
    return to_markdown(diff_graphs(before, after), before_label=label)
