"""Access: IRSA roles trust exactly one service account; least privilege; no static keys."""

from __future__ import annotations

import json

import pytest

from infra.components import access
from infra.offline.mocking import example_cluster_outputs
from tests.unit.pulumi_stacks import STACKS, graph, stack_value

ROLES = {"access-db": access.DB_SA, "access-landing": access.LANDING_SA}


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("role", sorted(ROLES))
def test_irsa_trust_is_one_service_account_of_one_namespace(stack, role):
    g = graph(stack)
    cluster = example_cluster_outputs("eu-west-1", stack)
    issuer = cluster["oidcProviderUrl"].removeprefix("https://")
    doc = json.loads(g.get("aws:iam/role:Role", role).plain["assumeRolePolicy"])
    [st] = doc["Statement"]
    assert st["Effect"] == "Allow"
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert st["Principal"] == {"Federated": cluster["oidcProviderArn"]}
    assert st["Condition"] == {"StringEquals": {
        f"{issuer}:sub": f"system:serviceaccount:{stack_value(stack, 'namespace')}:"
                         f"{ROLES[role]}",
        f"{issuer}:aud": "sts.amazonaws.com",
    }}


def test_trust_policy_has_no_wildcards():
    doc = access.trust_policy("arn:aws:iam::1:oidc-provider/x", "x", "ns", "sa")
    assert "*" not in doc and "StringLike" not in doc


@pytest.mark.parametrize("stack", STACKS)
def test_service_accounts_carry_their_role_and_nothing_else(stack):
    g = graph(stack)
    sas = {r.plain["metadata"]["name"]: r.plain
           for r in g.of_type("kubernetes:core/v1:ServiceAccount")}
    assert set(sas) == {access.DB_SA, access.LANDING_SA, access.WORKER_SA, access.BACKUP_SA}
    roles = {r.name: f"arn:aws:iam::123456789012:role/{r.name}-"
             for r in g.of_type("aws:iam/role:Role")}
    for role, sa in ROLES.items():
        arn = sas[sa]["metadata"]["annotations"][access.IRSA_ANNOTATION]
        assert arn.startswith(roles[role])
    for sa in (access.WORKER_SA, access.BACKUP_SA):
        assert access.IRSA_ANNOTATION not in (sas[sa]["metadata"].get("annotations") or {})
    # Only the backup account has an API token (it execs pgBackRest in the primary's pod).
    assert {n for n, s in sas.items() if s["automountServiceAccountToken"]} == {access.BACKUP_SA}


@pytest.mark.parametrize("stack", STACKS)
def test_role_policies_reach_only_their_own_bucket(stack):
    g = graph(stack)
    landing, backup = g.outputs["landingBucket"], g.outputs["backupBucket"]
    for role, bucket, other, may_delete in (("access-db", backup, landing, True),
                                            ("access-landing", landing, backup, False)):
        text = g.get("aws:iam/rolePolicy:RolePolicy", f"{role}-policy").plain["policy"]
        doc = json.loads(text)
        resources = {r for s in doc["Statement"] for r in (
            s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])}
        assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*",
                             g.outputs["kmsKeyArn"]}
        assert other not in text
        actions = {a for s in doc["Statement"] for a in s["Action"]}
        assert ("s3:DeleteObject" in actions) is may_delete
        assert not any(a.endswith("*") and a != "kms:GenerateDataKey*" for a in actions)
        assert {s["Effect"] for s in doc["Statement"]} == {"Allow"}


@pytest.mark.parametrize("stack", STACKS)
def test_nothing_gets_static_keys(stack):
    types = {r.type for r in graph(stack).resources}
    assert not {t for t in types if t.startswith("aws:iam/") and (
        "accessKey" in t or t.endswith(":User") or "userPolicy" in t)}


@pytest.mark.parametrize("stack", STACKS)
def test_backup_account_may_exec_into_the_primary_pod_only(stack):
    g = graph(stack)
    role = g.get("kubernetes:rbac.authorization.k8s.io/v1:Role", "access-backup-exec").plain
    for rule in role["rules"]:
        assert rule["resourceNames"] == ["tickstack-db-0"]
        assert rule["resources"] in (["pods"], ["pods/exec"])
    binding = g.get("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding",
                    "access-backup-exec").plain
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": access.BACKUP_SA,
                                    "namespace": stack_value(stack, "namespace")}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
