"""The dual-write replica: RDS for PostgreSQL, private, encrypted, TLS only, backed up."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from infra import versions
from infra.components import replica, workers
from infra.offline.graph import unwrap
from infra.offline.mocking import example_cluster_outputs
from tests.unit.pulumi_stacks import STACKS, graph, stack_value

RDS = "aws:rds/instance:Instance"


def instance(stack: str) -> dict:
    return graph(stack).get(RDS, "replica-db").plain


@pytest.mark.parametrize("stack", STACKS)
def test_rds_is_private_and_encrypted_with_the_stack_key(stack):
    g = graph(stack)
    db = instance(stack)
    assert db["publiclyAccessible"] is False
    assert db["storageEncrypted"] is True
    assert db["kmsKeyId"] == g.outputs["kmsKeyArn"]
    subnets = g.get("aws:rds/subnetGroup:SubnetGroup", "replica-subnets").plain
    assert subnets["subnetIds"] == example_cluster_outputs("eu-west-1", stack)["privateSubnetIds"]
    # The mocks name a subnet group after its resource: the instance uses this one.
    assert db["dbSubnetGroupName"].startswith("replica-subnets-")


@pytest.mark.parametrize("stack", STACKS)
def test_security_group_admits_only_the_cluster_on_postgres(stack):
    g = graph(stack)
    cluster = example_cluster_outputs("eu-west-1", stack)
    sg = g.get("aws:ec2/securityGroup:SecurityGroup", "replica-sg").plain
    assert sg["vpcId"] == cluster["vpcId"]
    assert "ingress" not in sg  # rules are separate resources, listed below
    rules = g.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert [r.name for r in rules] == ["replica-from-cluster"]
    rule = rules[0].plain
    assert rule["referencedSecurityGroupId"] == cluster["clusterSecurityGroupId"]
    assert (rule["ipProtocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 5432, 5432)
    assert "cidrIpv4" not in rule and "cidrIpv6" not in rule
    db = instance(stack)
    assert len(db["vpcSecurityGroupIds"]) == 1


@pytest.mark.parametrize("stack", STACKS)
def test_tls_is_forced_by_the_parameter_group(stack):
    g = graph(stack)
    params = g.get("aws:rds/parameterGroup:ParameterGroup", "replica-params").plain
    values = {p["name"]: p["value"] for p in params["parameters"]}
    assert values["rds.force_ssl"] == "1"
    assert params["family"] == f"postgres{versions.load().rds_engine_major}"
    assert instance(stack)["parameterGroupName"].startswith("replica-params-")


@pytest.mark.parametrize("stack", STACKS)
def test_engine_size_backups_and_protection_from_config(stack):
    db = instance(stack)
    assert db["engine"] == "postgres"
    # The major only: RDS upgrades minors itself (autoMinorVersionUpgrade).
    assert db["engineVersion"] == versions.load().rds_engine_major
    assert db["autoMinorVersionUpgrade"] is True
    assert db["allowMajorVersionUpgrade"] is True  # a table change is a reviewed major upgrade
    assert db["instanceClass"] == stack_value(stack, "replicaInstanceClass")
    assert db["allocatedStorage"] == stack_value(stack, "replicaAllocatedStorageGb")
    assert db["maxAllocatedStorage"] == stack_value(stack, "replicaMaxAllocatedStorageGb")
    assert db["multiAz"] is stack_value(stack, "replicaMultiAz")
    assert db["backupRetentionPeriod"] == stack_value(stack, "replicaBackupRetentionDays")
    assert db["backupRetentionPeriod"] >= 1
    assert db["deletionProtection"] is stack_value(stack, "deletionProtection")
    assert db["skipFinalSnapshot"] is stack_value(stack, "replicaSkipFinalSnapshot")
    if not db["skipFinalSnapshot"]:
        assert db["finalSnapshotIdentifier"] == f"tickstack-{stack}-replica-final"


def test_prod_is_protected_and_dev_is_not():
    assert instance("prod")["deletionProtection"] is True
    assert instance("dev")["deletionProtection"] is False
    assert graph("prod").get(RDS, "replica-db").protect is True
    assert graph("dev").get(RDS, "replica-db").protect is False


@pytest.mark.parametrize("stack", STACKS)
def test_master_password_is_generated_and_secret(stack):
    g = graph(stack)
    db = g.get(RDS, "replica-db")
    assert "password" in db.secret_paths()
    assert db.plain["username"] == replica.MASTER_USER
    assert g.get("random:index/randomPassword:RandomPassword",
                 "replica-master-password").plain["length"] >= 32


@pytest.mark.parametrize("stack", STACKS)
def test_workers_get_the_replica_dsn_from_a_secret_over_tls(stack):
    g = graph(stack)
    host = g.outputs["replicaAddress"]
    assert g.outputs["replicaEndpoint"] == f"{host}:{replica.PORT}"
    seen = 0
    for s in g.of_type("kubernetes:core/v1:Secret"):
        data = unwrap(s.inputs).get("stringData", {})
        if "TICKSTACK_REPLICA_DSN" not in data:
            continue
        seen += 1
        assert "stringData" in s.secret_paths()
        dsn = urlparse(data["TICKSTACK_REPLICA_DSN"])
        assert (dsn.hostname, dsn.port) == (host, replica.PORT)
        # RDS's certificate is verified against Amazon's CA bundle in the image.
        assert parse_qs(dsn.query)["sslmode"] == ["verify-full"]
        assert parse_qs(dsn.query)["sslrootcert"] == [workers.RDS_CA_BUNDLE]
    # migrate, ingest, replicate, retention
    assert seen == 4


@pytest.mark.parametrize("stack", STACKS)
def test_a_major_upgrade_can_be_applied_at_once(stack):
    """RDS keeps a change for the maintenance window unless told: for the major upgrade the
    stack applies it at once (replicaApplyImmediately), so the replaced parameter group of the
    old family is no longer in use when Pulumi deletes it; off by default."""
    assert instance(stack).get("applyImmediately") is False
    db = graph(stack, **{"tickstack:replicaApplyImmediately": True}).get(
        "aws:rds/instance:Instance", "replica-db").plain
    assert db["applyImmediately"] is True and db["allowMajorVersionUpgrade"] is True
