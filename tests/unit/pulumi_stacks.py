"""Shared by the Pulumi tests: each stack's graph, rendered once per session under mocks."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from infra.offline import mocking, render
from infra.offline.graph import Graph, Res

STACKS = ("dev", "prod")
RESTORE = {"targetTime": "2025-03-01T12:00:00Z", "backupSet": "20250223-030000F"}
POD_OWNERS = ("kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:Deployment",
              "kubernetes:batch/v1:Job", "kubernetes:batch/v1:CronJob")


def config(stack: str, **overrides: Any) -> dict[str, Any]:
    cfg, _ = render.stack_config(stack)
    cfg = dict(cfg)
    for k, v in overrides.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


@cache
def _graph(stack: str, overrides_json: str) -> Graph:
    return mocking.run(config(stack, **json.loads(overrides_json)), stack=stack)


def graph(stack: str, **overrides: Any) -> Graph:
    """The stack's graph (config from Pulumi.<stack>.yaml, keys overridden), cached."""
    return _graph(stack, json.dumps(overrides, sort_keys=True))


def restore_graph(stack: str) -> Graph:
    return graph(stack, **{"tickstack:restore": RESTORE})


def stack_value(stack: str, key: str) -> Any:
    return config(stack)[f"tickstack:{key}"]


def pod_spec(r: Res) -> dict:
    spec = r.plain["spec"]
    if r.type.endswith(":CronJob"):
        return spec["jobTemplate"]["spec"]["template"]
    return spec["template"]


def pods(g: Graph) -> list[tuple[Res, dict]]:
    """(owner, pod template) for every workload that runs pods."""
    return [(r, pod_spec(r)) for t in POD_OWNERS for r in g.of_type(t)]


def containers(pod: dict) -> list[dict]:
    return list(pod["spec"].get("initContainers") or []) + list(pod["spec"]["containers"])


def passwords(g: Graph) -> list[str]:
    """Every generated password's value in this graph (the mocks answer deterministically)."""
    return [mocking.mock_password(r.name, int(r.plain.get("length", 32)))
            for r in g.of_type("random:index/randomPassword:RandomPassword")]


def depends_on(g: Graph, r: Res) -> set[str]:
    """"type::name" of every resource `r` depends on (options and inputs)."""
    return {g.label(u) for u in r.dependencies}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def config_map_data(g: Graph, name: str) -> dict[str, str]:
    return g.get("kubernetes:core/v1:ConfigMap", name).plain["data"]
