"""The mandatory policy pack (infra/policy): every rule against both stacks' rendered graphs
(must pass) and against deliberately broken resources (must fail, naming the rule and the
resource). The last tests drive the real pulumi-policy analyzer service with the same
resources, as the engine would, to show the pack's wiring reports what the rules find."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2

from infra.policy import rules
from infra.policy.rules import Resource, Violation
from tests.unit import pulumi_stacks as ps

pytestmark = pytest.mark.unit

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


# --- broken resources fail -------------------------------------------------------------------

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


def _cases() -> list[tuple[str, str, Callable[[], list[Resource]], str]]:
    """(case id, rule, broken resources, the resource the violation must name)."""

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

    deny_tls = "DenyInsecureTransport"
    public_read = {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
                   "Action": "s3:GetObject", "Resource": "arn:aws:s3:::x/*"}
    sse = f"{SSE}::storage-landing-encryption"
    pab = f"{rules.BUCKET_PAB}::storage-landing-public-access-block"
    pol = f"{rules.BUCKET_POLICY}::storage-landing-policy"
    rds = f"{rules.RDS_INSTANCE}::replica-db"
    role = f"{rules.IAM_ROLE}::access-ingest"
    ingest = f"{DEPLOY}::workers-ingest"
    embed = f"{CRON}::workers-embed"
    db = f"{STS}::primary-statefulset"
    env_cm = f"{CM}::workers-env"
    replicate_policy = f"{ROLE_POLICY}::access-replicate-policy"
    check = f"{CRON}::workers-backup-check"
    key = Resource(type=rules.IAM_ACCESS_KEY, name="ci-user-key", props={"user": "ci"})
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
                        lambda p: set_policy(p, drop_sid=deny_tls)), LANDING),
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
         ingest),
        ("privileged-container", "pod-non-root-unprivileged",
         lambda: broken(CRON, "workers-embed", cron_sc("privileged", True)), embed),
        ("root-container", "pod-non-root-unprivileged",
         lambda: broken(CRON, "workers-embed", cron_sc("runAsUser", 0)), embed),
        ("privilege-escalation", "pod-non-root-unprivileged",
         lambda: broken(CRON, "workers-embed", cron_sc("allowPrivilegeEscalation", True)), embed),
        ("host-network", "pod-non-root-unprivileged",
         lambda: broken(DEPLOY, "workers-ingest",
                        lambda p: p["spec"]["template"]["spec"].update(hostNetwork=True)), ingest),
        ("container-without-limits", "pod-resource-limits",
         lambda: broken(STS, "primary-statefulset", no_limits), db),
        ("init-container-without-limits", "pod-resource-limits",
         lambda: broken(DEPLOY, "workers-ingest", init_without_limits), ingest),
        ("configmap-password-key", "no-plaintext-secrets-in-configmaps",
         lambda: broken(CM, "workers-env", cm("DB_PASSWORD", "hunter2")), env_cm),
        ("configmap-dsn-with-password", "no-plaintext-secrets-in-configmaps",
         lambda: broken(CM, "workers-env", cm("TICKSTACK_PRIMARY_URL",
                                              "postgresql://ingest:s3cr3t@db:5432/tickstack"
                                              "?sslmode=verify-full&sslrootcert=/ca.crt")),
         env_cm),
        ("configmap-conf-password", "no-plaintext-secrets-in-configmaps",
         lambda: broken(CM, "workers-env", cm("app.conf", "user = x\npassword = s3cr3t\n")),
         env_cm),
        ("image-by-tag", "image-pinned-by-digest",
         lambda: broken(CRON, "workers-embed", lambda p: pod_container(p, "CronJob").update(
             image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/workers:latest")), embed),
        ("unprotected-volume-in-prod", "data-volume-protected",
         lambda: [replace(r, protect=False) if r.type == STS else r
                  for r in resources("prod") if r.type == STS],
         f"{STS}::primary-statefulset"),
        ("storage-class-deletes-volumes", "data-volume-protected",
         lambda: [replace(r, props={**r.props, "reclaimPolicy": "Delete"})
                  for r in resources("prod") if r.type == rules.STORAGE_CLASS],
         f"{rules.STORAGE_CLASS}::primary-storage-class"),
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
             "template"]["spec"].update(serviceAccountName="tickstack-ingest")), embed),
        ("default-service-account", "one-service-account-per-workload",
         lambda: broken(CRON, "workers-embed", lambda p: p["spec"]["jobTemplate"]["spec"][
             "template"]["spec"].pop("serviceAccountName")), embed),
        ("dsn-secret-as-env-from", "no-secrets-in-env",
         lambda: broken(CRON, "workers-embed", lambda p: pod_container(p, "CronJob").setdefault(
             "envFrom", []).append({"secretRef": {"name": "tickstack-dsn-embed"}})), embed),
        ("password-from-secret-key-ref", "no-secrets-in-env",
         lambda: broken(STS, "primary-statefulset", lambda p: p["spec"]["template"]["spec"][
             "containers"][0]["env"].append({"name": "POSTGRES_PASSWORD", "valueFrom": {
                 "secretKeyRef": {"name": "tickstack-db-superuser",
                                  "key": "POSTGRES_PASSWORD"}}})), db),
        ("dsn-with-password-in-env", "no-secrets-in-env",
         lambda: broken(DEPLOY, "workers-ingest", env_add(
             "TICKSTACK_INGEST_URL", "postgresql://ingest:s3cr3t@db:5432/tickstack")), ingest),
        ("check-deadline-of-6-hours", "cronjob-deadline-before-next-run",
         lambda: broken(CRON, "workers-backup-check", lambda p: p["spec"]["jobTemplate"][
             "spec"].update(activeDeadlineSeconds=6 * 3600)), check),
        ("cronjob-without-deadline", "cronjob-deadline-before-next-run",
         lambda: broken(CRON, "workers-embed", lambda p: p["spec"]["jobTemplate"][
             "spec"].pop("activeDeadlineSeconds")), embed),
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
         env_cm),
    ]


CASES = _cases()


@pytest.mark.parametrize(("rule", "make", "resource"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_broken_resource_fails_naming_rule_and_resource(rule: str, make, resource: str) -> None:
    only(rules.check(make()), rule, resource)


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
