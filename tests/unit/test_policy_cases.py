"""Every rule of the policy pack (infra/policy) fails on a deliberately broken render, naming the
rule and the resource: one case per rule and way of breaking it, grouped by what the rules
guard (storage, identities, pods, configuration, workload scheduling)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from infra.policy import rules
from infra.policy.rules import Resource
from tests.unit.policy_support import (
    CM,
    CRON,
    DEPLOY,
    LANDING,
    ROLE_POLICY,
    SSE,
    STS,
    Mutation,
    broken,
    only,
    pod_container,
    resources,
    set_policy,
    set_trust,
    without,
)

pytestmark = pytest.mark.unit

Case = tuple[str, str, Callable[[], list[Resource]], str]

# The resources the violations must name.
INGEST = f"{DEPLOY}::workers-ingest"
EMBED = f"{CRON}::workers-embed"
DB = f"{STS}::primary-statefulset"
ENV_CM = f"{CM}::workers-env"


# --- mutations -------------------------------------------------------------------------------


def env_add(name: str, value: str) -> Mutation:
    return lambda p: pod_container(p).setdefault("env", []).append(
        {"name": name, "value": value})


def cron_sc(key: str, value) -> Mutation:
    return lambda p: pod_container(p, "CronJob")["securityContext"].__setitem__(key, value)


def trust_statement(edit: Callable[[dict], None]) -> Mutation:
    return lambda p: set_trust(p, edit)


def no_sub(s: dict) -> None:
    s["Condition"]["StringEquals"] = {k: v for k, v in s["Condition"]["StringEquals"].items()
                                      if not k.endswith(":sub")}


def wildcard_sub(s: dict) -> None:
    eq = s["Condition"]["StringEquals"]
    for k in list(eq):
        if k.endswith(":sub"):
            eq[k] = "system:serviceaccount:tickstack-dev:*"


def no_limits(p: dict) -> None:
    del p["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def init_without_limits(p: dict) -> None:
    spec = p["spec"]["template"]["spec"]
    spec["initContainers"] = [{"name": "setup", "image": "busybox@sha256:" + "0" * 64,
                               "securityContext": spec["containers"][0]["securityContext"]}]


def cm(key: str, value: str) -> Mutation:
    return lambda p: p["data"].__setitem__(key, value)


# --- the cases, by what the rules guard --------------------------------------------------------


def storage_cases() -> list[Case]:
    """Buckets (encrypted, not public, TLS only) and the replica's RDS instance."""
    public_read = {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
                   "Action": "s3:GetObject", "Resource": "arn:aws:s3:::x/*"}
    sse = f"{SSE}::storage-landing-encryption"
    pab = f"{rules.BUCKET_PAB}::storage-landing-public-access-block"
    pol = f"{rules.BUCKET_POLICY}::storage-landing-policy"
    rds = f"{rules.RDS_INSTANCE}::replica-db"
    return [
        ("bucket-without-encryption", "s3-bucket-encrypted",
         lambda: without(SSE, "storage-landing-encryption"), LANDING),
        ("bucket-encryption-not-kms", "s3-bucket-encrypted",
         lambda: broken(SSE, "storage-landing-encryption", lambda p: p["rules"][0][
             "applyServerSideEncryptionByDefault"].update(sseAlgorithm="AES256")), sse),
        ("bucket-without-public-access-block", "s3-bucket-not-public",
         lambda: without(rules.BUCKET_PAB, "storage-landing-public-access-block"), LANDING),
        ("public-access-block-off", "s3-bucket-not-public",
         lambda: broken(rules.BUCKET_PAB, "storage-landing-public-access-block",
                        lambda p: p.update(blockPublicPolicy=False)), pab),
        ("bucket-public-acl", "s3-bucket-not-public",
         lambda: broken(rules.BUCKET, "storage-landing", lambda p: p.update(acl="public-read")),
         LANDING),
        ("bucket-policy-allows-everyone", "s3-bucket-not-public",
         lambda: broken(rules.BUCKET_POLICY, "storage-landing-policy",
                        lambda p: set_policy(p, add=public_read)), pol),
        ("bucket-policy-without-tls-deny", "s3-bucket-tls-only",
         lambda: broken(rules.BUCKET_POLICY, "storage-landing-policy",
                        lambda p: set_policy(p, drop_sid="DenyInsecureTransport")), LANDING),
        ("bucket-without-policy", "s3-bucket-tls-only",
         lambda: without(rules.BUCKET_POLICY, "storage-landing-policy"), LANDING),
        ("rds-public", "rds-not-public",
         lambda: broken(rules.RDS_INSTANCE, "replica-db",
                        lambda p: p.update(publiclyAccessible=True)), rds),
        ("rds-unencrypted", "rds-encrypted",
         lambda: broken(rules.RDS_INSTANCE, "replica-db",
                        lambda p: p.update(storageEncrypted=False)), rds),
        ("rds-encryption-unset", "rds-encrypted",
         lambda: broken(rules.RDS_INSTANCE, "replica-db", lambda p: p.pop("storageEncrypted")),
         rds),
    ]


def identity_cases() -> list[Case]:
    """Who may assume a role, and no static AWS keys anywhere."""
    role = f"{rules.IAM_ROLE}::access-ingest"
    key = Resource(type=rules.IAM_ACCESS_KEY, name="ci-user-key", props={"user": "ci"})
    return [
        ("trust-without-sub", "iam-trust-service-account",
         lambda: broken(rules.IAM_ROLE, "access-ingest", trust_statement(no_sub)), role),
        ("trust-wildcard-service-account", "iam-trust-service-account",
         lambda: broken(rules.IAM_ROLE, "access-ingest", trust_statement(wildcard_sub)), role),
        ("trust-everyone", "iam-trust-service-account",
         lambda: broken(rules.IAM_ROLE, "access-ingest", trust_statement(
             lambda s: s.update(Principal={"AWS": "*"}, Action="sts:AssumeRole"))), role),
        ("iam-access-key", "no-static-access-keys",
         lambda: [*resources(), key], f"{rules.IAM_ACCESS_KEY}::ci-user-key"),
        ("static-keys-in-env", "no-static-access-keys",
         lambda: broken(DEPLOY, "workers-ingest", env_add("AWS_SECRET_ACCESS_KEY", "x" * 40)),
         INGEST),
    ]


def pod_cases() -> list[Case]:
    """Pods: non-root and unprivileged, with resource limits."""
    return [
        ("privileged-container", "pod-non-root-unprivileged",
         lambda: broken(CRON, "workers-embed", cron_sc("privileged", True)), EMBED),
        ("root-container", "pod-non-root-unprivileged",
         lambda: broken(CRON, "workers-embed", cron_sc("runAsUser", 0)), EMBED),
        ("privilege-escalation", "pod-non-root-unprivileged",
         lambda: broken(CRON, "workers-embed", cron_sc("allowPrivilegeEscalation", True)), EMBED),
        ("host-network", "pod-non-root-unprivileged",
         lambda: broken(DEPLOY, "workers-ingest",
                        lambda p: p["spec"]["template"]["spec"].update(hostNetwork=True)), INGEST),
        ("container-without-limits", "pod-resource-limits",
         lambda: broken(STS, "primary-statefulset", no_limits), DB),
        ("init-container-without-limits", "pod-resource-limits",
         lambda: broken(DEPLOY, "workers-ingest", init_without_limits), INGEST),
    ]


def config_map_cases() -> list[Case]:
    """No secret in a ConfigMap, whatever its shape."""
    return [
        ("configmap-password-key", "no-plaintext-secrets-in-configmaps",
         lambda: broken(CM, "workers-env", cm("DB_PASSWORD", "hunter2")), ENV_CM),
        ("configmap-dsn-with-password", "no-plaintext-secrets-in-configmaps",
         lambda: broken(CM, "workers-env", cm("TICKSTACK_PRIMARY_URL",
                                              "postgresql://ingest:s3cr3t@db:5432/tickstack"
                                              "?sslmode=verify-full&sslrootcert=/ca.crt")),
         ENV_CM),
        ("configmap-conf-password", "no-plaintext-secrets-in-configmaps",
         lambda: broken(CM, "workers-env", cm("app.conf", "user = x\npassword = s3cr3t\n")),
         ENV_CM),
    ]


def image_and_volume_cases() -> list[Case]:
    """Images pinned by digest; production's data volume protected and kept."""
    return [
        ("image-by-tag", "image-pinned-by-digest",
         lambda: broken(CRON, "workers-embed", lambda p: pod_container(p, "CronJob").update(
             image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/workers:latest")), EMBED),
        ("unprotected-volume-in-prod", "data-volume-protected",
         lambda: [replace(r, protect=False) if r.type == STS else r
                  for r in resources("prod") if r.type == STS],
         f"{STS}::primary-statefulset"),
        ("storage-class-deletes-volumes", "data-volume-protected",
         lambda: [replace(r, props={**r.props, "reclaimPolicy": "Delete"})
                  for r in resources("prod") if r.type == rules.STORAGE_CLASS],
         f"{rules.STORAGE_CLASS}::primary-storage-class"),
    ]


def least_privilege_cases() -> list[Case]:
    """IAM policies scoped to what a workload needs; one service account per workload."""
    replicate_policy = f"{ROLE_POLICY}::access-replicate-policy"
    return [
        ("iam-wildcard-action", "iam-policy-least-privilege",
         lambda: broken(ROLE_POLICY, "access-replicate-policy", lambda p: set_policy(p, add={
             "Sid": "Everything", "Effect": "Allow", "Action": "s3:*",
             "Resource": "arn:aws:s3:::storage-landing-0ec7b85"})), replicate_policy),
        ("iam-objects-of-the-whole-bucket", "iam-policy-least-privilege",
         lambda: broken(ROLE_POLICY, "access-replicate-policy", lambda p: set_policy(p, add={
             "Sid": "Wide", "Effect": "Allow", "Action": ["s3:DeleteObject"],
             "Resource": "arn:aws:s3:::storage-landing-0ec7b85/*"})), replicate_policy),
        ("two-workloads-share-an-account", "one-service-account-per-workload",
         lambda: broken(CRON, "workers-embed", lambda p: p["spec"]["jobTemplate"]["spec"][
             "template"]["spec"].update(serviceAccountName="tickstack-ingest")), EMBED),
        ("default-service-account", "one-service-account-per-workload",
         lambda: broken(CRON, "workers-embed", lambda p: p["spec"]["jobTemplate"]["spec"][
             "template"]["spec"].pop("serviceAccountName")), EMBED),
    ]


def secrets_in_env_cases() -> list[Case]:
    """Secrets reach a pod as files, never as environment variables."""
    return [
        ("dsn-secret-as-env-from", "no-secrets-in-env",
         lambda: broken(CRON, "workers-embed", lambda p: pod_container(p, "CronJob").setdefault(
             "envFrom", []).append({"secretRef": {"name": "tickstack-dsn-embed"}})), EMBED),
        ("password-from-secret-key-ref", "no-secrets-in-env",
         lambda: broken(STS, "primary-statefulset", lambda p: p["spec"]["template"]["spec"][
             "containers"][0]["env"].append({"name": "POSTGRES_PASSWORD", "valueFrom": {
                 "secretKeyRef": {"name": "tickstack-db-superuser",
                                  "key": "POSTGRES_PASSWORD"}}})), DB),
        ("dsn-with-password-in-env", "no-secrets-in-env",
         lambda: broken(DEPLOY, "workers-ingest", env_add(
             "TICKSTACK_INGEST_URL", "postgresql://ingest:s3cr3t@db:5432/tickstack")), INGEST),
    ]


def schedule_and_dsn_cases() -> list[Case]:
    """CronJobs end before their next run and never overlap; every DSN verifies the server."""
    return [
        ("check-deadline-of-6-hours", "cronjob-deadline-before-next-run",
         lambda: broken(CRON, "workers-backup-check", lambda p: p["spec"]["jobTemplate"][
             "spec"].update(activeDeadlineSeconds=6 * 3600)), f"{CRON}::workers-backup-check"),
        ("cronjob-without-deadline", "cronjob-deadline-before-next-run",
         lambda: broken(CRON, "workers-embed", lambda p: p["spec"]["jobTemplate"][
             "spec"].pop("activeDeadlineSeconds")), EMBED),
        ("cronjob-runs-may-overlap", "cronjob-deadline-before-next-run",
         lambda: broken(CRON, "workers-retention", lambda p: p["spec"].update(
             concurrencyPolicy="Allow")), f"{CRON}::workers-retention"),
        ("dsn-sslmode-require", "dsn-sslmode-verify-full",
         lambda: broken(rules.K8S_SECRET, "workers-dsn-embed", lambda p: p["stringData"].update(
             TICKSTACK_EMBED_DSN="postgresql://embed_worker:pw@db:5432/tickstack"
                                 "?sslmode=require")),
         f"{rules.K8S_SECRET}::workers-dsn-embed"),
        ("dsn-without-sslmode", "dsn-sslmode-verify-full",
         lambda: broken(CM, "workers-env", cm("report.conf",
                                              "host=db dbname=tickstack user=reader")),
         ENV_CM),
    ]


CASES = (storage_cases() + identity_cases() + pod_cases() + config_map_cases()
         + image_and_volume_cases() + least_privilege_cases() + secrets_in_env_cases()
         + schedule_and_dsn_cases())


@pytest.mark.parametrize(("rule", "make", "resource"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_broken_resource_fails_naming_rule_and_resource(rule: str, make, resource: str) -> None:
    only(rules.check(make()), rule, resource)
