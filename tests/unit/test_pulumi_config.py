"""Stack configuration: one typed object, validated before any resource; errors name the key."""

from __future__ import annotations

import pytest

from infra import stack_config as sc
from infra.offline import mocking
from tests.unit.pulumi_stacks import STACKS, config


def raw(stack: str, **overrides) -> dict:
    """`tickstack:*` values of a stack file, keys without the namespace, as Pulumi hands them."""
    cfg = config(stack, **{f"tickstack:{k}": v for k, v in overrides.items()})
    strings = mocking.config_strings(cfg)
    return {k.removeprefix("tickstack:"): v for k, v in strings.items()
            if k.startswith("tickstack:")}


def problems(stack: str = "dev", *, kubeconfig: bool = False, region: str | None = "eu-west-1",
             **overrides) -> str:
    with pytest.raises(sc.ConfigError) as e:
        sc.validate(raw(stack, **overrides), kubeconfig_given=kubeconfig, region=region)
    return str(e.value)


@pytest.mark.parametrize("stack", STACKS)
def test_stack_files_validate(stack):
    cfg = sc.validate(raw(stack), kubeconfig_given=False, region="eu-west-1")
    assert cfg.cluster_stack == f"organization/eks-cluster/{stack}"
    assert cfg.restore is None


def test_dev_and_prod_differ_where_expected():
    dev = sc.validate(raw("dev"), kubeconfig_given=False, region="eu-west-1")
    prod = sc.validate(raw("prod"), kubeconfig_given=False, region="eu-west-1")
    assert (dev.deletion_protection, prod.deletion_protection) == (False, True)
    assert (dev.protect_data, prod.protect_data) == (False, True)
    assert (dev.replica_multi_az, prod.replica_multi_az) == (False, True)
    assert dev.replica_backup_retention_days < prod.replica_backup_retention_days
    assert dev.backup_retention_full < prod.backup_retention_full
    assert (dev.primary_max_unavailable, prod.primary_max_unavailable) == (1, 0)


def test_bad_instance_class_names_the_key():
    msg = problems(replicaInstanceClass="m5.large")
    assert "tickstack:replicaInstanceClass: must look like db.<family>.<size>" in msg
    assert "m5.large" in msg


def test_missing_required_key_is_named():
    msg = problems(workerImageTag=None)
    assert "tickstack:workerImageTag: required" in msg


def test_unknown_key_is_named_with_a_suggestion():
    msg = problems(replicaInstanceClas="db.t4g.small")
    assert ("tickstack:replicaInstanceClas: unknown key "
            "(did you mean tickstack:replicaInstanceClass?)") in msg


def test_nested_keys_are_named():
    msg = problems(schedules={"backupFull": "0 3 * *", "backupDiff": "0 3 * * 1-6"})
    assert "tickstack:schedules.backupFull: a cron schedule has 5 fields" in msg
    msg = problems(schedules={"backupFull": "0 3 * * 0", "backupDiff": "0 3 * * 0"})
    assert "tickstack:schedules: backupFull and backupDiff must not run at the same times" in msg
    msg = problems(ingestResources={"cpu": "lots", "memory": "1Gi"})
    assert "tickstack:ingestResources.cpu: not a Kubernetes quantity" in msg


def test_restore_needs_a_zone_and_a_past_time():
    msg = problems(restore={"targetTime": "2025-03-01T12:00:00"})
    assert "tickstack:restore.targetTime: give the time zone" in msg
    msg = problems(restore={"targetTime": "2999-01-01T00:00:00Z"})
    assert "tickstack:restore.targetTime: the target time is in the future" in msg
    msg = problems(restore={"targetTime": "2025-03-01T12:00:00Z", "backupSet": "latest"})
    assert "tickstack:restore.backupSet" in msg
    ok = sc.validate(raw("dev", restore={"targetTime": "2025-03-01T13:00:00+01:00"}),
                     kubeconfig_given=False, region="eu-west-1")
    assert ok.restore is not None and ok.restore.target_iso == "2025-03-01T12:00:00+00:00"


def test_every_problem_is_reported_at_once():
    msg = problems(replicaInstanceClass="x", replicaEngineVersion="latest", namespace="Bad_NS")
    for key in ("replicaInstanceClass", "replicaEngineVersion", "namespace"):
        assert f"tickstack:{key}:" in msg


def test_versions_are_not_stack_settings_and_the_error_names_the_table():
    msg = problems(replicaEngineVersion="latest", primaryImage="example/postgres:latest")
    assert "tickstack:replicaEngineVersion: not a stack setting any more" in msg
    assert "tickstack:primaryImage: not a stack setting any more" in msg
    assert msg.count("scripts/versions.env") == 2
    assert "tickstack:primaryImageRepository" in msg  # what to set instead for a mirror


def test_region_is_required_and_checked():
    assert "aws:region: required" in problems(region=None)
    assert "aws:region: not an AWS region name" in problems(region="europe")


def test_lifecycle_constraints_of_s3():
    msg = problems(landingIaAfterDays=40, landingGlacierIrAfterDays=60)
    assert "tickstack:landingGlacierIrAfterDays: must be at least 30 days after" in msg
    assert "tickstack:landingIaAfterDays" in problems(landingIaAfterDays=10)


def test_cluster_is_a_stack_reference_or_an_explicit_kubeconfig():
    msg = problems(clusterStack=None)
    assert "tickstack:clusterStack: required unless tickstack:kubeconfig is set" in msg
    msg = problems(kubeconfig=True)
    assert "tickstack:kubeconfig: give either tickstack:clusterStack or tickstack:kubeconfig" in msg
    msg = problems(kubeconfig=True, clusterStack=None)
    for key in ("oidcProviderArn", "oidcProviderUrl", "vpcId", "vpcCidr", "privateSubnetIds",
                "clusterSecurityGroupId"):
        assert f"tickstack:{key}: required when the cluster is given by" in msg
    explicit = {
        "clusterStack": None,
        "oidcProviderArn": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1."
                           "amazonaws.com/id/ABC123",
        "oidcProviderUrl": "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC123",
        "vpcId": "vpc-0123abcd", "vpcCidr": "10.0.0.0/16",
        "privateSubnetIds": ["subnet-0a", "subnet-0b"], "clusterSecurityGroupId": "sg-0123",
    }
    cfg = sc.validate(raw("dev", **explicit), kubeconfig_given=True, region="eu-west-1")
    assert cfg.cluster_stack is None and cfg.vpc_id == "vpc-0123abcd"
    assert "tickstack:privateSubnetIds" in problems(
        kubeconfig=True, **{**explicit, "privateSubnetIds": ["net-1", "net-2"]})


def test_config_error_stops_the_program_before_any_resource(monkeypatch):
    recorded = []
    monkeypatch.setattr(mocking.RecordingMonitor, "_record",
                        lambda self, req, *a: recorded.append(req.type))
    bad = config("dev", **{"tickstack:replicaInstanceClass": "huge"})
    with pytest.raises(sc.ConfigError, match=r"tickstack:replicaInstanceClass: must look like"):
        mocking.run(bad, stack="dev")
    assert recorded == []
    # The same harness does record resources for a good config (the check above can fail).
    mocking.run(config("dev"), stack="dev")
    assert len(recorded) > 50


def test_a_job_deadline_must_end_before_the_next_run():
    """11b: a deadline as long as the schedule's interval lets a hung run silence the next."""
    msg = problems(schedules={"backupCheck": "*/5 * * * *"},
                   jobDeadlines={"backupCheck": 300, "embed": 300})
    assert ("tickstack:jobDeadlines.backupCheck: 300 s is not shorter than the shortest "
            "interval of schedules.backupCheck ('*/5 * * * *': 300 s)") in msg
    assert "tickstack:jobDeadlines.embed: 300 s" in msg
    # A check job (an alarm) gets minutes, whatever its schedule.
    assert "jobDeadlines.backupCheck" in problems(jobDeadlines={"backupCheck": 3600})
    cfg = sc.validate(raw("prod", jobDeadlines={"backupFull": 6 * 3600}),
                      kubeconfig_given=False, region="eu-west-1")
    assert cfg.job_deadlines.backup_full == 6 * 3600


@pytest.mark.parametrize(("schedule", "seconds"), [
    ("*/5 * * * *", 300), ("*/15 * * * *", 900), ("*/10 * * * *", 600),
    ("30 2 * * *", 86400), ("0 3 * * 0", 7 * 86400), ("0 3 * * 1-6", 86400),
    ("0,50 * * * *", 600), ("0 0 1 * *", 28 * 86400), ("0 12 * * 7", 7 * 86400),
    ("0 0 31 * *", 31 * 86400), ("5/20 * * * *", 20 * 60), ("0 1 1 * 1", 86400),
])
def test_cron_shortest_interval(schedule, seconds):
    from infra import cron

    assert cron.min_interval_seconds(schedule) == seconds
