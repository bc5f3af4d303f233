"""The primary's in-place major upgrade as the program renders it (`primaryMajorUpgrade`,
docs/upgrading.md): the StatefulSet at 0 replicas, the writers paused, and a Job in the primary's
image that runs the upgrade script on the primary's own volume with the primary's pgBackRest
configuration, under its own service account whose role grants exactly its row; off, none of
it. tests/integration/test_rendered_workloads.py runs the rendered Job for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import versions
from infra.components import database, grants
from infra.policy import rules
from tests.unit.policy_support import primary_image_unpinned
from tests.unit.pulumi_stacks import STACKS, containers, depends_on, graph, pod_spec
from tests.unit.test_pulumi_config import problems

JOB = "kubernetes:batch/v1:Job"
STS = "kubernetes:apps/v1:StatefulSet"
ON = {"tickstack:primaryMajorUpgrade": True}
DOCKERFILE = Path(database.__file__).parents[1] / "images" / "primary" / "Dockerfile"


def upgrade_graph(stack: str):
    return graph(stack, **ON)


def upgrade_job(g):
    [job] = [r for r in g.of_type(JOB) if r.name == "primary-major-upgrade"]
    return job


@pytest.mark.parametrize("stack", STACKS)
def test_off_there_is_no_upgrade_job_and_everything_runs(stack):
    g = graph(stack)
    assert not [r for r in g.of_type(JOB) if "upgrade" in r.name]
    assert g.get(STS, "primary-statefulset").plain["spec"]["replicas"] == 1
    assert grants.service_account("major-upgrade") not in {
        r.plain["metadata"]["name"] for r in g.of_type("kubernetes:core/v1:ServiceAccount")}
    assert g.get("kubernetes:apps/v1:Deployment", "workers-ingest").plain["spec"]["replicas"] == 1
    assert all(not c.plain["spec"]["suspend"] for c in g.of_type("kubernetes:batch/v1:CronJob"))


@pytest.mark.parametrize("stack", STACKS)
def test_on_the_primary_stops_and_the_job_upgrades_its_volume(stack):
    g = upgrade_graph(stack)
    sts = g.get(STS, "primary-statefulset")
    assert sts.plain["spec"]["replicas"] == 0
    job = upgrade_job(g)
    # Created only once the scale to 0 is applied.
    assert f"{STS}::primary-statefulset" in depends_on(g, job)
    pod = pod_spec(job)
    [c] = pod["spec"]["containers"]
    sts_pod = pod_spec(sts)
    [pg] = [x for x in sts_pod["spec"]["containers"] if x["name"] == database.CONTAINER]
    # The primary's image, user, PGDATA.
    assert c["image"] == pg["image"] == versions.load().primary_image()
    assert c["securityContext"]["runAsUser"] == pg["securityContext"]["runAsUser"]
    assert pod["spec"]["securityContext"] == sts_pod["spec"]["securityContext"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["PGDATA"] == {e["name"]: e.get("value") for e in pg["env"]}["PGDATA"]
    # The upgrade script with the image's two builds, the primary's stanza and configuration.
    assert c["command"][:2] == ["sh", "-c"]
    assert ('exec tickstack-major-upgrade --data "$PGDATA" --old-bindir "$PG_PREVIOUS_BINDIR" '
            '--new-bindir "$PG_BINDIR" "$@"') in c["command"][2]
    assert c["command"][4:] == ["180", "--stanza", "tickstack", "--pgbackrest-config",
                                database.PGBACKREST_CONF]
    # The volume is the StatefulSet's own claim, mounted where the primary mounts it; the
    # pgBackRest configuration is the primary's ConfigMap at the primary's path.
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    [claim] = sts.plain["spec"]["volumeClaimTemplates"]
    assert vols["data"] == {"name": "data", "persistentVolumeClaim": {
        "claimName": f"{claim['metadata']['name']}-{sts.plain['metadata']['name']}-0"}}
    sts_vols = {v["name"]: v for v in sts_pod["spec"]["volumes"]}
    assert vols["pgbackrest-config"] == sts_vols["pgbackrest-config"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    pg_mounts = {m["mountPath"]: m["name"] for m in pg["volumeMounts"]}
    assert mounts[database.PGDATA_MOUNT] == pg_mounts[database.PGDATA_MOUNT] == "data"
    assert mounts[database.PGBACKREST_DIR] == "pgbackrest-config"
    assert "superuser" not in vols  # it never needs the password
    # Runs once to completion, re-run by the next `up` when it failed; Pulumi waits for it.
    spec = job.plain["spec"]
    assert pod["spec"]["restartPolicy"] == "Never" and spec["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] == 6 * 3600
    assert job.plain["metadata"]["annotations"]["pulumi.com/replaceUnready"] == "true"
    # Its own service account and role: the stanza's info files, nothing else.
    assert pod["spec"]["serviceAccountName"] == "tickstack-major-upgrade"
    assert pod["metadata"]["labels"]["tickstack.io/workload"] == "major-upgrade"
    assert pod["metadata"]["labels"]["tickstack.io/https-egress"] == "true"
    doc = json.loads(g.get("aws:iam/rolePolicy:RolePolicy",
                           "access-major-upgrade-policy").plain["policy"])
    acts = {a for s in doc["Statement"] for a in s["Action"]}
    assert acts == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "kms:Decrypt",
                    "kms:GenerateDataKey"}
    # Not selected by the database's Services and policies: it is not the primary.
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] != "database"


@pytest.mark.parametrize("stack", STACKS)
def test_on_the_writers_are_paused(stack):
    g = upgrade_graph(stack)
    assert g.get("kubernetes:apps/v1:Deployment", "workers-ingest").plain["spec"]["replicas"] == 0
    cronjobs = g.of_type("kubernetes:batch/v1:CronJob")
    assert cronjobs and all(c.plain["spec"]["suspend"] is True for c in cronjobs)


def test_the_image_carries_the_script_and_both_builds():
    text = DOCKERFILE.read_text()
    assert ("COPY --chmod=0755 scripts/pg_major_upgrade.sh /usr/local/bin/tickstack-major-upgrade"
            in text)
    assert "PG_BINDIR=/usr/lib/postgresql/${PG_MAJOR}/bin" in text
    assert "PG_PREVIOUS_BINDIR=/usr/lib/postgresql/${PG_PREVIOUS_MAJOR}/bin" in text


def test_the_policy_pack_passes_the_upgrade_render():
    g = upgrade_graph("prod")
    res = rules.from_graph(g, production=True)
    found = rules.check(res)
    job = [r for r in res if r.type == JOB and r.name == "primary-major-upgrade"]
    expected = primary_image_unpinned(res)
    if not rules.DIGEST.search(versions.load().primary_image()):
        # Until CI records the image's digest, the Job's container is unpinned like the pod's.
        expected += [rules.Violation("image-pinned-by-digest", job[0].label,
                                     f"container {c['name']}: image {c['image']!r} is not "
                                     f"pinned by digest (@sha256:…)")
                     for c in containers(pod_spec(upgrade_job(g)))]
    assert sorted(map(str, found)) == sorted(map(str, expected))


def test_not_together_with_a_restore():
    msg = problems(primaryMajorUpgrade=True,
                   restore={"targetTime": "2025-03-01T12:00:00Z"})
    assert "tickstack:primaryMajorUpgrade: not together with tickstack:restore" in msg


def test_a_wrong_value_is_named():
    assert "tickstack:primaryMajorUpgrade" in problems(primaryMajorUpgrade="yes please")
