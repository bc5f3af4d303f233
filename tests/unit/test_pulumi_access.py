"""Access: one service account and IRSA role per workload, each granting exactly its row of
infra/components/grants.GRANTS; trust of exactly one service account; no static keys."""

from __future__ import annotations

import json

import pytest

from infra.components import access, grants
from infra.offline.mocking import example_cluster_outputs
from tests.unit.pulumi_stacks import POD_OWNERS, STACKS, graph, pods, restore_graph, stack_value

ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
WITH_ROLE = sorted(i for i, row in grants.GRANTS.items() if row)


UPGRADE = {"tickstack:primaryMajorUpgrade": True}
LABELS = [f"{s}{r}" for s in STACKS for r in ("", "-restore", "-upgrade")]


def _graphs():
    return ([(s, graph(s)) for s in STACKS] + [(f"{s}-restore", restore_graph(s)) for s in STACKS]
            + [(f"{s}-upgrade", graph(s, **UPGRADE)) for s in STACKS])


def _identities(label: str) -> set[str]:
    return set(grants.identities(restore=label.endswith("-restore"),
                                 major_upgrade=label.endswith("-upgrade")))


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("identity", WITH_ROLE)
def test_irsa_trust_is_one_service_account_of_one_namespace(stack, identity):
    g = graph(stack, **UPGRADE) if identity in grants.MAJOR_UPGRADE_ONLY else restore_graph(stack)
    cluster = example_cluster_outputs("eu-west-1", stack)
    issuer = cluster["oidcProviderUrl"].removeprefix("https://")
    doc = json.loads(g.get(ROLE, f"access-{identity}").plain["assumeRolePolicy"])
    [st] = doc["Statement"]
    assert st["Effect"] == "Allow"
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert st["Principal"] == {"Federated": cluster["oidcProviderArn"]}
    assert st["Condition"] == {"StringEquals": {
        f"{issuer}:sub": f"system:serviceaccount:{stack_value(stack, 'namespace')}:"
                         f"{grants.service_account(identity)}",
        f"{issuer}:aud": "sts.amazonaws.com",
    }}


def test_trust_policy_has_no_wildcards():
    doc = access.trust_policy("arn:aws:iam::1:oidc-provider/x", "x", "ns", "sa")
    assert "*" not in doc and "StringLike" not in doc


@pytest.mark.parametrize("label", LABELS)
def test_one_service_account_and_role_per_workload(label):
    """Every identity of the table has its service account; a role exactly where its row is
    not empty (annotated on that account and no other); no two workloads share an account."""
    g = dict(_graphs())[label]
    want = _identities(label)
    sas = {r.plain["metadata"]["name"]: r.plain
           for r in g.of_type("kubernetes:core/v1:ServiceAccount")}
    assert set(sas) == {grants.service_account(i) for i in want}
    roles = {r.name.removeprefix("access-"): r for r in g.of_type(ROLE)
             if r.name.startswith("access-")}
    assert set(roles) == {i for i in want if grants.GRANTS[i]}
    arns = set()
    for i in want:
        annotations = sas[grants.service_account(i)]["metadata"].get("annotations") or {}
        if grants.GRANTS[i]:
            arn = annotations[access.IRSA_ANNOTATION]
            assert arn.startswith(f"arn:aws:iam::123456789012:role/access-{i}-"), (i, arn)
            arns.add(arn)
        else:
            assert access.IRSA_ANNOTATION not in annotations, i
    assert len(arns) == len(roles)  # no role annotated on two accounts
    # No account has an API token: nothing talks to the Kubernetes API.
    assert not any(s["automountServiceAccountToken"] for s in sas.values())
    # Every pod runs under its own workload's account; two workloads never share one.
    by_sa: dict[str, set[str]] = {}
    for owner, pod in pods(g):
        sa = pod["spec"]["serviceAccountName"]
        ident = pod["metadata"]["labels"].get("tickstack.io/workload", "db")
        assert sa == grants.service_account(ident), (owner.name, sa, ident)
        by_sa.setdefault(sa, set()).add(ident)
    assert all(len(v) == 1 for v in by_sa.values()), by_sa
    assert POD_OWNERS


def _granted(doc: dict, bucket_arns: dict[str, str], kms: str) -> set[tuple]:
    """(bucket, prefix or None, action) triples and ("kms", action) pairs the policy allows."""
    arn_bucket = {v: k for k, v in bucket_arns.items()}
    out: set[tuple] = set()
    for s in doc["Statement"]:
        assert s["Effect"] == "Allow" and "Condition" not in s and "NotAction" not in s
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        for a in s["Action"]:
            assert "*" not in a, a
            for r in resources:
                if r == kms:
                    assert a.startswith("kms:"), a
                    out.add(("kms", a))
                elif r in arn_bucket:
                    out.add((arn_bucket[r], None, a))
                else:
                    arn, _, key = r.partition("/")
                    assert arn in arn_bucket and key.endswith("*") and key[:-1], r
                    assert "*" not in key[:-1], r
                    out.add((arn_bucket[arn], key[:-1], a))
    return out


@pytest.mark.parametrize("label", LABELS)
def test_each_role_grants_exactly_its_row(label):
    """(a) of item 9: the rendered policy of each role is its row, no more, no less — object
    actions on exactly the row's prefixes, ListBucket where it lists, the KMS actions the S3
    actions need, nothing on the other bucket."""
    g = dict(_graphs())[label]
    arns = {"landing": f"arn:aws:s3:::{g.outputs['landingBucket']}",
            "backup": f"arn:aws:s3:::{g.outputs['backupBucket']}"}
    kms = g.outputs["kmsKeyArn"]
    for i in _identities(label):
        if not grants.GRANTS[i]:
            continue
        doc = json.loads(g.get(ROLE_POLICY, f"access-{i}-policy").plain["policy"])
        want = {(gr.bucket, gr.prefix, a) for gr in grants.GRANTS[i] for a in gr.actions
                if a != grants.LIST}
        want |= {(gr.bucket, None, grants.LIST) for gr in grants.GRANTS[i]
                 if grants.LIST in gr.actions}
        want |= {("kms", a) for a in grants.kms_actions(i)}
        assert _granted(doc, arns, kms) == want, i


def test_the_stream_may_delete_its_compacted_parts_and_nobody_else_deletes_landing():
    """The defect of issue 27 (9): the stream deletes parts it compacted (Landing.delete);
    replicate only reads."""
    assert grants.DELETE in grants.actions("ingest", "landing")
    assert grants.actions("replicate") == {grants.LIST, grants.GET}
    assert not grants.actions("db") & {grants.DELETE}
    assert grants.actions("backup-check") == {grants.LIST, grants.GET}
    deleters = {i for i in grants.GRANTS if grants.DELETE in grants.actions(i, "landing")}
    assert deleters == {"ingest", "restore"}


def test_kms_follows_the_s3_actions():
    assert grants.kms_actions("replicate") == ("kms:Decrypt",)
    assert grants.kms_actions("ingest") == ("kms:Decrypt", "kms:GenerateDataKey")
    assert grants.kms_actions("embed") == ()


def test_a_workload_without_a_row_is_refused():
    with pytest.raises(KeyError, match="no row in infra/components/grants.GRANTS"):
        grants.identity_of("lake-compact")
    with pytest.raises(ValueError, match="non-empty subset"):
        grants.Grant("landing", "raw/", frozenset({"s3:*"}))


@pytest.mark.parametrize("stack", STACKS)
def test_nothing_gets_static_keys(stack):
    types = {r.type for r in graph(stack).resources}
    assert not {t for t in types if t.startswith("aws:iam/") and (
        "accessKey" in t or t.endswith(":User") or "userPolicy" in t)}


@pytest.mark.parametrize("stack", STACKS)
def test_no_workload_may_exec_into_pods(stack):
    """Backups no longer stream through the API server: no Role grants pods/exec."""
    g = graph(stack)
    for r in g.of_type("kubernetes:rbac.authorization.k8s.io/v1:Role"):
        for rule in r.plain.get("rules", []):
            assert "pods/exec" not in rule.get("resources", []), r.name
    assert not g.of_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding")
