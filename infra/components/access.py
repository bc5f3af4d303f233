"""Access: IAM roles for service accounts (IRSA) and the Kubernetes service accounts.

Each IAM role trusts the cluster's OIDC provider for exactly one namespace/service account
(`sub`) and the STS audience (`aud`); nothing gets static keys. The service accounts:

  tickstack-db       the primary's pod: read/write the backup bucket (pgBackRest, WAL archive)
  tickstack-landing  ingest, replicate, restore: read/write the landing bucket (no delete)
  tickstack-worker   migrate, embed, retention: no AWS access at all
  tickstack-backup   the backup Jobs: read/write/delete the backup bucket (they are pgBackRest's
                     repository host: files come from the TLS server in the primary's pod and go
                     to S3 from here; expiring old backups deletes). No Kubernetes API access:
                     backups no longer run over `pods/exec`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.components.k8s import name_of

DB_SA = "tickstack-db"
LANDING_SA = "tickstack-landing"
WORKER_SA = "tickstack-worker"
BACKUP_SA = "tickstack-backup"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"


@dataclass(frozen=True)
class AccessArgs:
    namespace: pulumi.Input[str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]  # without https://
    kms_key_arn: pulumi.Input[str]
    landing_bucket_arn: pulumi.Input[str]
    backup_bucket_arn: pulumi.Input[str]


def trust_policy(provider_arn: str, issuer: str, namespace: str, service_account: str) -> str:
    """Web identity trust for exactly one service account of one namespace."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                f"{issuer}:aud": "sts.amazonaws.com",
            }},
        }],
    })


def bucket_policy(bucket_arn: pulumi.Input[str], kms_key_arn: pulumi.Input[str], *,
                  delete: bool) -> pulumi.Output[str]:
    object_actions = ["s3:GetObject", "s3:PutObject"] + (["s3:DeleteObject"] if delete else [])
    return pulumi.Output.json_dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ListBucket", "Effect": "Allow",
             "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": bucket_arn},
            {"Sid": "Objects", "Effect": "Allow", "Action": object_actions,
             "Resource": pulumi.Output.concat(bucket_arn, "/*")},
            {"Sid": "Kms", "Effect": "Allow",
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey",
                        "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey"],
             "Resource": kms_key_arn},
        ],
    })


class Access(pulumi.ComponentResource):
    """IRSA roles and service accounts. Needs a Kubernetes provider in `opts.providers`."""

    db_role_arn: pulumi.Output[str]
    landing_role_arn: pulumi.Output[str]
    backup_role_arn: pulumi.Output[str]
    service_accounts: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: AccessArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickstack:access:Access", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        def irsa_role(key: str, sa: str, policy: pulumi.Output[str], what: str) -> aws.iam.Role:
            trust = pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer,
                                      args.namespace).apply(
                lambda a: trust_policy(a[0], a[1], a[2], sa))
            role = aws.iam.Role(f"{name}-{key}", assume_role_policy=trust,
                                description=f"tickstack {what} (IRSA: {sa})", opts=child)
            aws.iam.RolePolicy(f"{name}-{key}-policy", role=role.id, policy=policy, opts=child)
            return role

        db_role = irsa_role("db", DB_SA, bucket_policy(
            args.backup_bucket_arn, args.kms_key_arn, delete=True),
            "primary database: pgBackRest to the backup bucket")
        landing_role = irsa_role("landing", LANDING_SA, bucket_policy(
            args.landing_bucket_arn, args.kms_key_arn, delete=False),
            "workers: the landing bucket")
        backup_role = irsa_role("backup", BACKUP_SA, bucket_policy(
            args.backup_bucket_arn, args.kms_key_arn, delete=True),
            "backup Jobs: pgBackRest's repository in the backup bucket")
        self.db_role_arn = db_role.arn
        self.landing_role_arn = landing_role.arn
        self.backup_role_arn = backup_role.arn

        def service_account(sa: str, role: aws.iam.Role | None) -> pulumi.Output[str]:
            meta: dict = {"name": sa, "namespace": args.namespace,
                          "labels": {"app.kubernetes.io/part-of": "tickstack"}}
            if role is not None:
                meta["annotations"] = {IRSA_ANNOTATION: role.arn}
            acct = k8s.core.v1.ServiceAccount(
                f"{name}-sa-{sa}", metadata=meta,
                automount_service_account_token=False, opts=child)
            return name_of(acct)

        self.service_accounts = {
            DB_SA: service_account(DB_SA, db_role),
            LANDING_SA: service_account(LANDING_SA, landing_role),
            WORKER_SA: service_account(WORKER_SA, None),
            BACKUP_SA: service_account(BACKUP_SA, backup_role),
        }
        self.register_outputs({"dbRoleArn": self.db_role_arn,
                               "landingRoleArn": self.landing_role_arn,
                               "backupRoleArn": self.backup_role_arn})
