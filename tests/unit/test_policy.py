"""The mandatory policy pack (infra/policy): every rule against both stacks' rendered graphs
(must pass) and against deliberately broken resources (must fail, naming the rule and the
resource; one case per rule and way of breaking it in test_policy_cases.py). The last tests
drive the real pulumi-policy analyzer service with the same resources, as the engine would, to
show the pack's wiring reports what the rules find."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2

from infra.policy import rules
from infra.policy.rules import Resource
from tests.unit.policy_support import (
    ALL_GRAPHS,
    CM,
    STS,
    broken,
    only,
    primary_image_unpinned,
    resources,
)

pytestmark = pytest.mark.unit


# --- the program passes ------------------------------------------------------------------------


@pytest.mark.parametrize(("stack", "restore"), ALL_GRAPHS)
def test_rendered_stacks_pass_every_rule(stack: str, restore: bool) -> None:
    res = resources(stack, restore)
    found = rules.check(res)
    assert found == primary_image_unpinned(res), "\n".join(map(str, found))


def test_worker_images_are_pinned_and_production_data_is_protected() -> None:
    """The new rules are not vacuous on the render: they see what they judge."""
    res = resources("prod")
    pods = [r for r in res if r.type in rules.POD_SPEC_PATHS and r.name.startswith("workers-")]
    assert pods and not rules.check(pods, [rules.rule("image-pinned-by-digest")])
    [sts] = [r for r in res if r.type == STS]
    assert sts.production and sts.protect
    secrets = [r for r in res if r.type == rules.K8S_SECRET and any(
        "DSN" in k for k in (r.props.get("stringData") or {}))]
    assert len(secrets) >= 5


def test_every_rule_has_something_to_judge() -> None:
    """A pass must not be vacuous: each rule's resource types occur in the graph."""
    types = {r.type for r in resources("prod")}
    for rule in rules.RULES:
        wanted = rule.types or {rules.BUCKET}
        if rule.name == "no-static-access-keys":
            wanted = wanted - {rules.IAM_ACCESS_KEY}  # must not occur
        assert types & wanted, f"{rule.name}: no resource of {sorted(wanted)} in the graph"


def test_pack_registers_every_rule_as_mandatory() -> None:
    from pulumi_policy import EnforcementLevel

    from infra.policy.__main__ import policies

    pols = policies()
    assert sorted({p.name for p in pols}) == sorted(r.name for r in rules.RULES)
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in pols)


# --- broken resources fail (the case table: test_policy_cases.py) -----------------------


def test_pulumi_secret_in_configmap_fails() -> None:
    """A value that is a Pulumi secret must never be written into a ConfigMap."""
    base = resources()
    out = [replace(r, secret_paths=("data.TICKSTACK_LANDING_BUCKET",))
           if r.label == f"{CM}::workers-env" else r for r in base]
    found = only(rules.check(out), "no-plaintext-secrets-in-configmaps", f"{CM}::workers-env")
    assert "Pulumi secret" in found[0].message


def test_static_key_id_in_configmap_fails() -> None:
    found = rules.check(broken(CM, "workers-env", lambda p: p["data"].update(
        NOTE="AKIAABCDEFGHIJKLMNOP")))
    found = [v for v in found if v.resource == f"{CM}::workers-env"]
    assert {v.rule for v in found} == {"no-static-access-keys",
                                        "no-plaintext-secrets-in-configmaps"}


def test_second_bucket_without_protection_is_named() -> None:
    """A new bucket added without its companions fails all three bucket rules, by name."""
    extra = Resource(type=rules.BUCKET, name="scratch", props={"forceDestroy": True},
                     urn="urn:pulumi:dev::tickstack::aws:s3/bucket:Bucket::scratch")
    found = rules.check([*resources(), extra])
    assert {(v.rule, v.resource) for v in found} - {
        (v.rule, v.resource) for v in primary_image_unpinned(resources())} == {
        ("s3-bucket-encrypted", "aws:s3/bucket:Bucket::scratch"),
        ("s3-bucket-not-public", "aws:s3/bucket:Bucket::scratch"),
        ("s3-bucket-tls-only", "aws:s3/bucket:Bucket::scratch"),
    }


# --- the pack as the engine runs it --------------------------------------------------------


def _struct(props: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(json.loads(json.dumps(props, default=str)), struct_pb2.Struct())


def _servicer():
    from pulumi_policy import EnforcementLevel
    from pulumi_policy.policy import _PolicyAnalyzerServicer

    from infra.policy.__main__ import PACK_NAME, policies

    return _PolicyAnalyzerServicer(PACK_NAME, "1.0.0", policies(), EnforcementLevel.MANDATORY,
                                   None)


def analyze(res: list[Resource], production: bool = False) -> list[tuple[str, str, str]]:
    """(policy, urn, message) of every diagnostic the pack's analyzer service returns;
    `production`: what the pack reads from the stack's config at run time."""
    import infra.policy.__main__ as pack

    mp = pytest.MonkeyPatch()
    mp.setattr(pack, "production", lambda: production)
    try:
        return _analyze(res)
    finally:
        mp.undo()


def _analyze(res: list[Resource]) -> list[tuple[str, str, str]]:
    svc = _servicer()
    out = []
    for r in res:
        req = analyzer_pb2.AnalyzeRequest(
            type=r.type, name=r.name, urn=r.urn, properties=_struct(dict(r.props)),
            options=analyzer_pb2.AnalyzerResourceOptions(protect=r.protect))
        out += [(d.policyName, d.urn or r.urn, d.message)
                for d in svc.Analyze(req, None).diagnostics]
    stack_req = analyzer_pb2.AnalyzeStackRequest(resources=[
        analyzer_pb2.AnalyzerResource(type=r.type, name=r.name, urn=r.urn,
                                      properties=_struct(dict(r.props)),
                                      dependencies=list(r.depends_on))
        for r in res])
    out += [(d.policyName, d.urn, d.message)
            for d in svc.AnalyzeStack(stack_req, None).diagnostics]
    mandatory = analyzer_pb2.EnforcementLevel.Value("MANDATORY")
    for d in svc.AnalyzeStack(stack_req, None).diagnostics:
        assert d.enforcementLevel == mandatory
    return out


def test_engine_passes_the_rendered_stack() -> None:
    res = resources("prod")
    want = {(v.rule, next(r.urn for r in res if r.label == v.resource))
            for v in primary_image_unpinned(res)}
    assert {(p, u) for p, u, _ in analyze(res, production=True)} == want
    # Unprotected, the same production stack is refused for its data volume.
    bare = [replace(r, protect=False) for r in res]
    assert ("data-volume-protected", next(r.urn for r in res if r.type == STS)) in {
        (p, u) for p, u, _ in analyze(bare, production=True)}


def test_engine_reports_broken_resources_by_urn() -> None:
    res = broken(rules.RDS_INSTANCE, "replica-db", lambda p: p.update(publiclyAccessible=True))
    res = [r for r in res if r.name != "storage-backup-policy"]
    found = analyze(res)
    urn = {r.name: r.urn for r in res}
    assert {(p, u) for p, u, _ in found if p != "image-pinned-by-digest"} == {
        ("rds-not-public", urn["replica-db"]),
        ("s3-bucket-tls-only", urn["storage-backup"]),
    }, found
