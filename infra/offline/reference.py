"""Generated references: docs/reference/settings.md from the models themselves, so it cannot drift.

    python -m infra.offline.reference           # (re)write docs/reference/settings.md
    python -m infra.offline.reference --check   # exit 1 when the committed file is stale

Two sources, walked generically through pydantic's `model_fields` (nested models included, so a
regrouping of either model changes the page, never the generator):

* the workers' `Settings` (workers/core/settings.py): one row per environment variable
  (`TICKSTACK_…`), its type, default and description;
* the stack config (infra/stack_config.py): one row per `tickstack:` key of `Pulumi.<stack>.yaml`.

`make docs` runs it; tests/unit/test_docs.py fails when the committed page differs.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "reference" / "settings.md"


# --- rendering values and types ----------------------------------------------------------------

def type_name(tp: Any) -> str:
    """A reader's name for an annotation: `int`, `str or none`, `"json" | "console"`, …"""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or none" if type(None) in args else "")
    if origin in (list, tuple, set, frozenset):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is SecretStr:
        return "secret string"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(f'"{m.value}"' for m in tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def bounds(info: FieldInfo) -> str:
    """The numeric bounds a field validates (`≥ 30, ≤ 3600`), if any."""
    out = []
    for m in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"),
                           ("min_length", "length ≥"), ("max_length", "length ≤")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sign} {v:,}" if isinstance(v, int) else f"{sign} {v}")
    return ", ".join(out)


def value_text(v: Any) -> str:
    if isinstance(v, SecretStr):
        v = v.get_secret_value()
    if isinstance(v, BaseModel):
        v = v.model_dump(by_alias=True, exclude_none=True)
    if v is None:
        return "none"
    if v == "" or v == [] or v == {}:
        return "empty"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, dict):
        return "`{" + ", ".join(f"{k}: {x}" for k, x in v.items()) + "}`"
    return f"`{v}`"


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        produced = info.default_factory()
        return value_text(produced) if produced in ([], {}) else "computed at start"
    if info.is_required():
        return "**required**"
    return value_text(info.default)


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _model_of(tp: Any) -> type[BaseModel] | None:
    """The BaseModel a field holds (`Model`, `Model | None`), else None."""
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


# --- walking the models ------------------------------------------------------------------------

def settings_rows(model: type[BaseModel], prefix: str, delimiter: str | None,
                  path: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
    """(env var, type, default, description) of every field, nested models walked."""
    rows = []
    for name, info in model.model_fields.items():
        alias = info.validation_alias
        if alias is not None and not isinstance(alias, str):  # AliasChoices / AliasPath
            choices = getattr(alias, "choices", None) or [alias]
            first = choices[0]
            alias = first if isinstance(first, str) else "_".join(map(str, first.path))
        inner = _model_of(info.annotation)
        if inner is not None and alias is None:
            rows += settings_rows(inner, prefix, delimiter, (*path, name))
            continue
        env = alias.upper() if alias else prefix + (delimiter or "_").join((*path, name)).upper()
        if alias and not alias.upper().startswith(prefix):
            env = prefix + alias.upper()
        kind = type_name(info.annotation)
        if b := bounds(info):
            kind += f", {b}"
        rows.append((env, kind, default_text(info), info.description or ""))
    return rows


def stack_rows(model: type[BaseModel], path: tuple[str, ...] = ()
               ) -> list[tuple[str, str, str, str]]:
    """(config key, type, default, description) of every stack config key; nested models give
    both their own row (with the whole default) and one row per sub-key."""
    rows = []
    for name, info in model.model_fields.items():
        key = ".".join((*path, info.alias or name))
        kind = type_name(info.annotation)
        if b := bounds(info):
            kind += f", {b}"
        inner = _model_of(info.annotation)
        doc = (inner.__doc__ or "").strip().split("\n\n")[0] if inner else ""
        rows.append((key, kind, default_text(info), info.description or doc))
        if inner is not None:
            rows += stack_rows(inner, (*path, info.alias or name))
    return rows


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], code_first: bool = True) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for first, *rest in rows:
        first = f"`{first}`" if code_first else first
        lines.append("| " + " | ".join([first, *(cell(x) for x in rest)]) + " |")
    return "\n".join(lines)


def render() -> str:
    from infra.stack_config import NAMESPACE, StackConfig
    from workers.core.settings import Settings

    cfg = Settings.model_config
    prefix = (cfg.get("env_prefix") or "").upper()
    srows = settings_rows(Settings, prefix, cfg.get("env_nested_delimiter"))
    krows = [(f"{NAMESPACE}:{k}", *rest) for k, *rest in stack_rows(StackConfig)]
    return "\n".join([
        "<!-- GENERATED by `make docs` (python -m infra.offline.reference) from",
        "     workers/core/settings.py and infra/stack_config.py: do not edit by hand. -->",
        "# Settings reference",
        "",
        "## Workers: environment variables",
        "",
        f"Every worker command reads these once at start (`workers/core/settings.py`, prefix "
        f"`{prefix}`). Where `TICKSTACK_SECRETS_DIR` names a directory, a file named as the "
        "variable is read too (how the cloud mounts each workload's DSN Secret); the "
        "environment wins. How the local environment sets them: "
        "`eval \"$(python -m infra.local env)\"`.",
        "",
        table(("variable", "type", "default", "what it does"), srows),
        "",
        "## Stacks: `tickstack:` config keys",
        "",
        "Every key of `Pulumi.<stack>.yaml` (`infra/stack_config.py`), validated before "
        "anything is declared; a wrong, missing or unknown key fails naming it. A dotted key "
        "is a field of the mapping above it (`pulumi config set --path "
        "'tickstack:schedules.embed' '*/10 * * * *'`). `aws:region` is required too.",
        "",
        table(("key", "type", "default", "what it does"), krows),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.offline.reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 when the committed page is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT.relative_to(REPO)} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["render", "settings_rows", "stack_rows", "main"]
