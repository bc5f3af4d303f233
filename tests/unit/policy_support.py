"""The policy tests' toolkit (tests/unit/test_policy*.py): the rendered stacks as the pack
sees them, and the render with one resource deliberately broken."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace

from infra.policy import rules
from infra.policy.rules import Resource, Violation
from tests.unit import pulumi_stacks as ps

ALL_GRAPHS = [(s, False) for s in ps.STACKS] + [(s, True) for s in ps.STACKS]


def resources(stack: str = "dev", restore: bool = False) -> list[Resource]:
    g = ps.restore_graph(stack) if restore else ps.graph(stack)
    return rules.from_graph(g, production=stack == "prod")


def primary_image_unpinned(res: list[Resource]) -> list[Violation]:
    """The one violation the render has today: the primary's image is the version table's
    (issue 17), by digest once CI records one; until then the pack refuses the deploy, which
    is what it is for. Computed from the render, so a pinned image expects nothing."""
    [sts] = [r for r in res if r.type == STS and r.name == "primary-statefulset"]
    spec = sts.props["spec"]["template"]["spec"]
    return [Violation("image-pinned-by-digest", sts.label,
                      f"container {c['name']}: image {c['image']!r} is not pinned by digest "
                      f"(@sha256:…)")
            for c in [*(spec.get("initContainers") or []), *spec["containers"]]
            if not rules.DIGEST.search(c["image"])]


Mutation = Callable[[dict], None]


def broken(type_: str, name: str, mutate: Mutation,
           base: list[Resource] | None = None) -> list[Resource]:
    """The dev graph with one resource's inputs changed by `mutate`."""
    base = base if base is not None else resources()
    out, hit = [], False
    for r in base:
        if r.type == type_ and r.name == name:
            props = copy.deepcopy(dict(r.props))
            mutate(props)
            r = replace(r, props=props)
            hit = True
        out.append(r)
    assert hit, f"{type_} {name} not in the graph"
    return out


def without(type_: str, name: str) -> list[Resource]:
    base = resources()
    assert any(r.type == type_ and r.name == name for r in base)
    return [r for r in base if not (r.type == type_ and r.name == name)]


def only(found: list[Violation], rule: str, resource: str) -> list[Violation]:
    """Every violation is `rule` on `resource`, and there is at least one; its text names both.
    (The render's own known violation, primary_image_unpinned, is not the broken part.)"""
    known = {str(v) for st in ps.STACKS for v in primary_image_unpinned(resources(st))}
    found = [v for v in found
             if not (str(v) in known and (v.rule, v.resource) != (rule, resource))]
    assert found, f"expected {rule} on {resource}, found nothing"
    assert {(v.rule, v.resource) for v in found} == {(rule, resource)}, \
        "\n".join(map(str, found))
    for v in found:
        assert rule in str(v) and resource in str(v)
    return found


def pod_container(props: dict, kind: str = "Deployment", index: int = 0) -> dict:
    spec = props["spec"]
    if kind == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]["containers"][index]


def set_policy(props: dict, drop_sid: str | None = None, add: dict | None = None) -> None:
    doc = json.loads(props["policy"])
    doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") != drop_sid]
    if add:
        doc["Statement"].append(add)
    props["policy"] = json.dumps(doc)


def set_trust(props: dict, edit: Callable[[dict], None]) -> None:
    doc = json.loads(props["assumeRolePolicy"])
    edit(doc["Statement"][0])
    props["assumeRolePolicy"] = json.dumps(doc)


LANDING = "aws:s3/bucket:Bucket::storage-landing"
SSE = rules.BUCKET_SSE
DEPLOY = "kubernetes:apps/v1:Deployment"
STS = "kubernetes:apps/v1:StatefulSet"
CRON = "kubernetes:batch/v1:CronJob"
CM = rules.CONFIG_MAP
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
