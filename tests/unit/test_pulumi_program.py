"""The whole program: schemas, pod security, structure, outputs, dev/prod, warnings, render."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pulumi_aws as aws
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from infra.offline import mocking, render
from infra.offline.graph import SECRET, Graph
from infra.offline.mocking import example_cluster_outputs
from tests.unit.pulumi_stacks import (
    STACKS,
    config,
    containers,
    graph,
    passwords,
    pods,
    restore_graph,
    stack_value,
)

REPO = Path(__file__).resolve().parents[2]
# The oldest Kubernetes minor we support (CronJob timeZone, PVC retention policy are GA) and
# the newest the offline schemas know.
K8S_VERSIONS = ("1.30", kv_utils.latest_version())
GRAPHS = {"dev": lambda: graph("dev"), "prod": lambda: graph("prod"),
          "prod-restore": lambda: restore_graph("prod"),
          "prod-major-upgrade": lambda: graph("prod", **{"tickstack:primaryMajorUpgrade": True})}


# --- every Kubernetes object validates against the Kubernetes schemas (offline) ---------------


@pytest.mark.parametrize("which", sorted(GRAPHS))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_object_validates(which, version):
    g = GRAPHS[which]()
    objects = g.k8s_objects()
    assert len(objects) > 30
    for r in objects:
        try:
            kubernetes_validate.validate(g.manifest(r), version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{r.type} {r.name}: {e.message} at {list(e.path)}")


def test_validation_catches_a_wrong_field():
    g = graph("dev")
    m = g.manifest(g.get("kubernetes:batch/v1:Job", "workers-migrate"))
    m["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRoot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(m, K8S_VERSIONS[0], strict=True)


# --- pods: non-root, read-only root filesystem, no capabilities, limits -----------------------


@pytest.mark.parametrize("which", sorted(GRAPHS))
def test_every_pod_is_hardened(which):
    g = GRAPHS[which]()
    found = pods(g)
    assert len(found) >= 8
    for owner, pod in found:
        spec = pod["spec"]
        where = owner.name
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] > 0, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where
        for c in containers(pod):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["privileged"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert set(c["resources"]["limits"]) == {"cpu", "memory"}, where
            assert set(c["resources"]["requests"]) == {"cpu", "memory"}, where


@pytest.mark.parametrize("stack", STACKS)
def test_namespace_enforces_the_restricted_pod_security_standard(stack):
    ns = graph(stack).get("kubernetes:core/v1:Namespace", "cluster-namespace").plain
    assert ns["metadata"]["name"] == stack_value(stack, "namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(GRAPHS))
def test_components_own_every_resource_and_register_outputs(which):
    g = GRAPHS[which]()
    components = [r for r in g.resources if not r.custom]
    assert {r.type for r in components} == {
        "tickstack:cluster:Cluster", "tickstack:storage:Storage", "tickstack:access:Access",
        "tickstack:network:NetworkPolicies", "tickstack:database:Primary",
        "tickstack:replica:Replica", "tickstack:workers:Workers"}
    for r in components:
        assert r.parent is None, r.name  # top-level, directly under the stack
        assert r.urn in g.outputs_registered, r.name
    component_urns = {r.urn for r in components}
    for r in g.resources:
        if r.custom:
            assert r.parent in component_urns, f"{r.type} {r.name} is not inside a component"


@pytest.mark.parametrize("which", sorted(GRAPHS))
def test_no_resource_is_created_inside_an_apply(which):
    assert GRAPHS[which]().created_in_apply == []


def test_the_apply_guard_notices_a_resource_created_in_an_apply():
    def program():
        bucket = aws.s3.Bucket("b")
        bucket.bucket.apply(lambda n: aws.s3.BucketVersioning(
            "v", bucket=n, versioning_configuration={"status": "Enabled"}))
        return {}

    g = mocking.run({"aws:region": "eu-west-1"}, program=program)
    assert g.created_in_apply == ["aws:s3/bucketVersioning:BucketVersioning v"]


def deprecations(g: Graph) -> list[str]:
    return ([m for c, m in g.warnings if "Deprecat" in c or "deprecat" in m.lower()]
            + [m for lvl, m in g.log if lvl == "WARNING" and "deprecat" in m.lower()])


@pytest.mark.parametrize("which", sorted(GRAPHS))
def test_running_the_program_emits_no_deprecation_warning(which):
    g = GRAPHS[which]()
    assert deprecations(g) == []
    assert [m for lvl, m in g.log if lvl in ("WARNING", "ERROR")] == []


def test_a_deprecated_resource_would_be_noticed():
    def program():
        aws.s3.BucketV2("old")
        return {}

    g = mocking.run({"aws:region": "eu-west-1"}, program=program)
    assert any("BucketV2" in m for m in deprecations(g))


def test_a_deprecated_argument_would_be_noticed():
    def program():
        aws.s3.Bucket("b", acl="private")
        return {}

    g = mocking.run({"aws:region": "eu-west-1"}, program=program)
    assert any("acl is deprecated" in m for m in deprecations(g))


@pytest.mark.parametrize("stack", STACKS)
def test_every_provider_resource_is_checked_for_deprecated_arguments(stack):
    unchecked = {r.type for r in graph(stack).resources
                 if r.custom and mocking.sdk_args_class(r.type) is None}
    assert unchecked == {"pulumi:pulumi:StackReference", "pulumi:providers:kubernetes"}


@pytest.mark.parametrize("stack", STACKS)
def test_stack_outputs(stack):
    g = graph(stack)
    for key in ("landingBucket", "backupBucket", "replicaEndpoint", "imageRepository",
                "namespace"):
        assert g.outputs[key], key
    assert g.outputs["namespace"] == stack_value(stack, "namespace")
    assert g.secret_outputs == set()
    assert g.outputs["landingBucket"] != g.outputs["backupBucket"]


def test_the_pulumi_entry_point_runs_the_program():
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    assert project["main"] == "infra/"
    g = mocking.run(config("dev"), stack="dev",
                    program=lambda: runpy.run_path(str(REPO / "infra" / "__main__.py")))
    assert {(r.type, r.name) for r in g.resources} == {
        (r.type, r.name) for r in graph("dev").resources}


# --- dev and prod differ only through config ---------------------------------------------


def test_dev_and_prod_declare_the_same_resources():
    def shape(g):
        return sorted((r.type, r.name, g.label(r.parent)) for r in g.resources)

    assert shape(graph("dev")) == shape(graph("prod"))


def test_dev_and_prod_differ_in_sizes_retention_protection_and_schedules():
    dev, prod = graph("dev"), graph("prod")

    def val(g, type_, name, *path):
        v = g.get(type_, name).plain
        for p in path:
            v = v[p]
        return v

    rds = "aws:rds/instance:Instance"
    differ = [
        (rds, "replica-db", "instanceClass"), (rds, "replica-db", "multiAz"),
        (rds, "replica-db", "deletionProtection"), (rds, "replica-db", "backupRetentionPeriod"),
        (rds, "replica-db", "allocatedStorage"),
        ("kubernetes:policy/v1:PodDisruptionBudget", "primary-pdb", "spec", "maxUnavailable"),
        ("kubernetes:apps/v1:StatefulSet", "primary-statefulset", "spec",
         "volumeClaimTemplates", 0, "spec", "resources", "requests", "storage"),
        ("kubernetes:batch/v1:CronJob", "workers-replicate", "spec", "schedule"),
        ("kubernetes:batch/v1:CronJob", "workers-backup-full", "spec", "schedule"),
        ("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
         "storage-landing-lifecycle", "rules", 0, "noncurrentVersionExpiration"),
    ]
    for type_, name, *path in differ:
        assert val(dev, type_, name, *path) != val(prod, type_, name, *path), (name, path)
    assert val(prod, rds, "replica-db", "deletionProtection") is True
    protected = {r.name for r in prod.resources if r.protect}
    assert protected == {"storage-key", "storage-landing", "storage-backup", "replica-db",
                         "cluster-namespace", "primary-statefulset", "primary-storage-class"}
    assert not any(r.protect for r in dev.resources)


def test_the_stack_name_changes_nothing_but_the_final_snapshot_name():
    prod = graph("prod")
    other = mocking.run(config("prod"), stack="staging",
                        cluster_outputs=example_cluster_outputs("eu-west-1", "prod"))
    differ = set()
    for r in prod.resources:
        o = other.get(r.type, r.name)
        if o.masked != r.masked:
            differ |= {f"{r.name}.{k}" for k in r.masked if o.masked.get(k) != r.masked[k]}
    assert differ == {"replica-db.finalSnapshotIdentifier"}


# --- python -m infra.render ------------------------------------------------------------------


def test_render_prints_the_graph_with_secrets_masked(tmp_path, capsys):
    out = tmp_path / "dev.json"
    assert render.main(["--stack", "dev", "-o", str(out)]) == 0
    text = out.read_text()
    doc = json.loads(text)
    assert doc["stack"] == "dev" and doc["project"] == "tickstack"
    types = {r["type"] for r in doc["resources"]}
    assert {"aws:rds/instance:Instance", "kubernetes:apps/v1:StatefulSet"} <= types
    for r in doc["resources"]:
        assert set(r) >= {"type", "name", "parent", "inputs"}
    secret = next(r for r in doc["resources"] if r["name"] == "primary-superuser")
    assert secret["inputs"]["stringData"] == SECRET
    for pw in passwords(graph("dev")):
        assert pw not in text
    assert doc["outputs"]["namespace"] == stack_value("dev", "namespace")


def test_render_overrides_and_config_errors(capsys):
    doc = render.render("dev", {"tickstack:restore": {"targetTime": "2025-03-01T12:00:00Z"}})
    assert any(r["name"] == "workers-restore" for r in doc["resources"])
    assert render.main(["--stack", "dev", "--set", "tickstack:replicaInstanceClass=m5.large"]) == 2
    assert "tickstack:replicaInstanceClass" in capsys.readouterr().err
    assert render.main(["--stack", "nosuch"]) == 2
    assert "dev, prod" in capsys.readouterr().err


def test_render_cli_help_and_entry_point():
    r = subprocess.run([sys.executable, "-m", "infra.render", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "--stack" in r.stdout and "--set" in r.stdout
    r = subprocess.run([sys.executable, "-m", "infra.render", "--stack", "prod"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stack"] == "prod"

