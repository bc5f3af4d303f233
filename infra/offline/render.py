"""`python -m infra.render --stack dev|prod`: the resource graph `pulumi up` would declare.

Runs the real program offline under Pulumi's mocks (infra/offline/mocking.py) with the stack's
config from Pulumi.<stack>.yaml and prints JSON: every resource's type, name, parent,
dependencies and inputs, with secrets masked, then the stack outputs. No cloud, no Pulumi CLI,
no network.

A cluster stack reference (tickstack:clusterStack) cannot be read offline: its outputs are
example values (`--cluster-outputs FILE` gives real ones as JSON). Encrypted config values
(`secure:`) cannot be decrypted offline either: they render as "[secret]". `--set KEY=VALUE`
overrides a config key, e.g. to preview a disaster-recovery rebuild (docs/pulumi.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def project_name(root: Path = REPO) -> str:
    return yaml.safe_load((root / "Pulumi.yaml").read_text())["name"]


def stack_config(stack: str, root: Path = REPO) -> tuple[dict[str, Any], list[str]]:
    """The stack file's config (key -> value) and which keys are secrets."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no stack file {path.name} (stacks: "
                                f"{', '.join(stacks(root)) or 'none'})")
    doc = yaml.safe_load(path.read_text()) or {}
    config: dict[str, Any] = {}
    secret_keys: list[str] = []
    project = project_name(root)
    for key, value in (doc.get("config") or {}).items():
        full = key if ":" in key else f"{project}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            config[full] = "[secret]"
            secret_keys.append(full)
        else:
            config[full] = value
    return config, secret_keys


def stacks(root: Path = REPO) -> list[str]:
    return sorted(p.name.split(".")[1] for p in root.glob("Pulumi.*.yaml"))


def render(stack: str, overrides: dict[str, Any] | None = None, *,
           cluster_outputs: dict | None = None, root: Path = REPO) -> dict:
    """The stack's graph as JSON-ready data; `overrides` replace config keys (None: remove)."""
    from infra.offline import mocking

    config, secret_keys = stack_config(stack, root)
    for key, value in (overrides or {}).items():
        full = key if ":" in key else f"{project_name(root)}:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    graph = mocking.run(config, stack=stack, project=project_name(root),
                        secret_keys=tuple(secret_keys), cluster_outputs=cluster_outputs)
    return graph.to_json()


def parse_set(item: str) -> tuple[str, Any]:
    """--set KEY=VALUE: the value is read as YAML (numbers, booleans, {...} objects)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    return key, yaml.safe_load(value) if value else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.render", description=__doc__.split("\n")[0])
    p.add_argument("--stack", required=True, help="dev, prod, ... (Pulumi.<stack>.yaml)")
    p.add_argument("--cluster-outputs", type=Path,
                   help="JSON file with the cluster stack's outputs (default: examples)")
    p.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    p.add_argument("--set", dest="overrides", action="append", type=parse_set, default=[],
                   metavar="KEY=VALUE",
                   help="override a config key (value read as YAML; empty removes the key), "
                        "e.g. --set 'tickstack:restore={targetTime: \"2025-03-01T12:00:00Z\"}'")
    p.add_argument("--diff-against", metavar="REF",
                   help="print a Markdown resource diff of the program at git ref REF vs. the "
                        "working tree instead of the graph (infra/offline/diff.py)")
    a = p.parse_args(argv)
    if a.diff_against:
        return _diff_main(a)
    from infra.stack_config import ConfigError

    try:
        outs = json.loads(a.cluster_outputs.read_text()) if a.cluster_outputs else None
        doc = render(a.stack, dict(a.overrides), cluster_outputs=outs)
    except (FileNotFoundError, ConfigError) as e:
        print(f"render: {e}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if a.output:
        a.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _diff_main(a: argparse.Namespace) -> int:
    """--diff-against REF: both sides rendered with the same --set/--cluster-outputs."""
    from infra.offline import diff

    extra: list[str] = []
    for key, value in a.overrides:
        extra += ["--set", f"{key}=" + ("" if value is None else json.dumps(value))]
    if a.cluster_outputs:
        extra += ["--cluster-outputs", str(a.cluster_outputs.resolve())]
    try:
        text = diff.diff_against(a.diff_against, a.stack, extra)
    except diff.DiffError as e:
        print(f"render: {e}", file=sys.stderr)
        return 2
    if a.output:
        a.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
