"""The dual-write replica (AWS): RDS for PostgreSQL with pgvector, private and encrypted.

Not publicly accessible; in the cluster's private subnets; its security group admits on 5432
only the listed source security groups (the cluster's, plus node groups' or pods' security
groups as configured: `replicaSourceSecurityGroupIds`); storage encrypted with the stack's KMS
key; TLS forced (`rds.force_ssl`); automated backups retained; deletion protection and a final
snapshot as config says (on in prod). The master password is generated (pulumi_random, a
secret); workers get their own least-privilege logins, created by `workers migrate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra import configs

PORT = 5432
DATABASE = configs.DATABASE
MASTER_USER = configs.REPLICA_ADMIN


@dataclass(frozen=True)
class ReplicaArgs:
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    source_security_group_ids: list[pulumi.Input[str]]
    kms_key_arn: pulumi.Input[str]
    instance_class: str
    engine_version: str
    allocated_storage_gb: int
    max_allocated_storage_gb: int
    multi_az: bool
    backup_retention_days: int
    deletion_protection: bool
    skip_final_snapshot: bool
    protect: bool
    final_snapshot_name: str
    # Apply a change now instead of in the maintenance window: the major upgrade's `up`
    # (docs/upgrading.md) — a pending one would keep the old parameter group in use, and
    # deleting it (the new family replaces it) would fail the `up`.
    apply_immediately: bool = False


class Replica(pulumi.ComponentResource):
    address: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    master_password: pulumi.Output[str]
    instance: aws.rds.Instance

    def __init__(self, name: str, args: ReplicaArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickstack:replica:Replica", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        major = args.engine_version.split(".")[0]

        subnets = aws.rds.SubnetGroup(
            f"{name}-subnets", subnet_ids=args.subnet_ids,
            description="tickstack replica: the cluster's private subnets", opts=child)
        sg = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=args.vpc_id,
            description="tickstack replica: PostgreSQL from the cluster only", opts=child)
        # One rule per source group, each its own resource (named by position, so adding a
        # group adds a rule and changes none).
        for i, group in enumerate(args.source_security_group_ids):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-from-{i}" if i else f"{name}-from-cluster", security_group_id=sg.id,
                referenced_security_group_id=group,
                ip_protocol="tcp", from_port=PORT, to_port=PORT,
                description="PostgreSQL from tickstack's pods" if i else
                "PostgreSQL from the cluster's pods and nodes", opts=child)
        params = aws.rds.ParameterGroup(
            f"{name}-params", family=f"postgres{major}",
            description="tickstack replica: TLS only",
            parameters=[
                {"name": "rds.force_ssl", "value": "1"},
                {"name": "password_encryption", "value": "scram-sha-256"},
                {"name": "log_min_duration_statement", "value": "2000"},
                {"name": "log_lock_waits", "value": "1"},
            ],
            opts=child)
        password = random.RandomPassword(f"{name}-master-password", length=32, special=False,
                                         opts=child)
        self.master_password = password.result
        final_snapshot = None if args.skip_final_snapshot else args.final_snapshot_name
        self.instance = aws.rds.Instance(
            f"{name}-db",
            engine="postgres",
            engine_version=args.engine_version,
            instance_class=args.instance_class,
            db_name=DATABASE,
            username=MASTER_USER,
            password=password.result,
            port=PORT,
            allocated_storage=args.allocated_storage_gb,
            max_allocated_storage=args.max_allocated_storage_gb,
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=args.kms_key_arn,
            db_subnet_group_name=subnets.name,
            vpc_security_group_ids=[sg.id],
            publicly_accessible=False,
            parameter_group_name=params.name,
            multi_az=args.multi_az,
            backup_retention_period=args.backup_retention_days,
            backup_window="01:00-01:30",
            maintenance_window="sun:04:30-sun:05:30",
            copy_tags_to_snapshot=True,
            deletion_protection=args.deletion_protection,
            skip_final_snapshot=args.skip_final_snapshot,
            final_snapshot_identifier=final_snapshot,
            auto_minor_version_upgrade=True,
            # The engine major is the version table's: a change there is a reviewed major
            # upgrade (docs/upgrading.md), which RDS refuses without this flag.
            allow_major_version_upgrade=True,
            apply_immediately=args.apply_immediately,
            enabled_cloudwatch_logs_exports=["postgresql"],
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        self.address = self.instance.address
        self.endpoint = self.instance.endpoint
        self.register_outputs({"address": self.address, "endpoint": self.endpoint})
