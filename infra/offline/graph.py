"""The resource graph a program run under mocks recorded (mocking.py): every resource's type,
name, parent, dependencies, options and inputs, secrets still wrapped, and the stack outputs.

What the render prints (`to_json`, secrets masked), the tests assert on, and the policy pack
and the diff read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pulumi.runtime import rpc

SECRET = "[secret]"


# --- secrets in recorded inputs ------------------------------------------------------------------


def unwrap(value: Any) -> Any:
    """Inputs with Pulumi's secret wrappers removed (the plain values)."""
    if rpc.is_rpc_secret(value):
        return unwrap(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def mask(value: Any) -> Any:
    """Inputs with every secret replaced by "[secret]"."""
    if rpc.is_rpc_secret(value):
        return SECRET
    if isinstance(value, dict):
        return {k: mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def integral(value: Any) -> Any:
    """Numbers travel as floats; give integral ones back as ints (schemas want integers)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


# --- the recorded graph ---------------------------------------------------------------------


@dataclass
class Res:
    urn: str
    type: str
    name: str
    parent: str | None  # parent URN (None: the stack)
    custom: bool
    inputs: dict  # raw: secrets still wrapped
    dependencies: list[str]
    provider: str | None
    protect: bool = False
    # Resource options the engine acts on (recorded so tests and the diff can reason about
    # them): retainOnDelete, ignoreChanges, replaceOnChanges, deleteBeforeReplace, and
    # customTimeouts as {"create"|"update"|"delete": seconds}.
    options: dict = field(default_factory=dict)

    @property
    def plain(self) -> dict:
        return integral(unwrap(self.inputs))

    @property
    def masked(self) -> dict:
        return integral(mask(self.inputs))

    def secret_paths(self) -> list[str]:
        out: list[str] = []

        def walk(v: Any, path: str) -> None:
            if rpc.is_rpc_secret(v):
                out.append(path)
            elif isinstance(v, dict):
                for k, x in v.items():
                    walk(x, f"{path}.{k}" if path else k)
            elif isinstance(v, list):
                for i, x in enumerate(v):
                    walk(x, f"{path}[{i}]")

        walk(self.inputs, "")
        return out


@dataclass
class Graph:
    stack: str
    project: str
    resources: list[Res]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)
    log: list[tuple[str, str]] = field(default_factory=list)  # engine log: (level, message)
    outputs_registered: set[str] = field(default_factory=set)
    # Python warnings raised while the program ran: (category name, message).
    warnings: list[tuple[str, str]] = field(default_factory=list)
    # "type name" of every resource constructed inside an Output.apply callback: such resources
    # are invisible to `pulumi preview` and must not exist.
    created_in_apply: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Res]:
        return [r for r in self.resources if r.type == type_]

    def get(self, type_: str, name: str) -> Res:
        found = [r for r in self.resources if r.type == type_ and r.name == name]
        if len(found) != 1:
            raise KeyError(f"{type_} {name}: {len(found)} found; have "
                           f"{sorted(r.name for r in self.of_type(type_))}")
        return found[0]

    def by_urn(self, urn: str) -> Res:
        for r in self.resources:
            if r.urn == urn:
                return r
        raise KeyError(urn)

    def label(self, urn: str | None) -> str | None:
        if not urn:
            return None
        try:
            r = self.by_urn(urn)
        except KeyError:
            return urn.split("::")[-1] if "pulumi:pulumi:Stack" in urn else urn
        return f"{r.type}::{r.name}"

    def k8s_objects(self) -> list[Res]:
        return [r for r in self.resources
                if r.custom and r.type.startswith("kubernetes:") and "/" in r.type]

    def manifest(self, r: Res) -> dict:
        """The Kubernetes object as `kubectl apply` would see it (secrets unwrapped)."""
        group_version, kind = r.type.removeprefix("kubernetes:").split(":")
        group, version = group_version.split("/")
        api = version if group == "core" else f"{group}/{version}"
        obj = dict(r.plain)
        obj["apiVersion"] = obj.get("apiVersion", api)
        obj["kind"] = obj.get("kind", kind)
        return obj

    def to_json(self) -> dict:
        """The graph as printed by `python -m infra.render` (secrets masked)."""
        return {
            "project": self.project,
            "stack": self.stack,
            "resources": [
                {"type": r.type, "name": r.name, "parent": self.label(r.parent),
                 "custom": r.custom, "protect": r.protect, **r.options,
                 "dependsOn": sorted(filter(None, (self.label(d) for d in r.dependencies))),
                 "inputs": r.masked}
                for r in self.resources
            ],
            "outputs": {k: (SECRET if k in self.secret_outputs else v)
                        for k, v in sorted(self.outputs.items())},
        }
