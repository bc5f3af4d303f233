"""Access: one IAM role (IRSA) and one Kubernetes service account per workload.

Each workload — the primary's pod (`tickstack-db`), every Job, CronJob and the stream's
Deployment — runs under its own service account `tickstack-<identity>`
(infra/components/grants.py names them). Where the workload touches AWS, the account carries
its own IRSA role whose policy grants exactly that workload's row of grants.GRANTS (S3 actions
on key prefixes, and the KMS actions they need); workloads with an empty row (migrate, embed,
retention) get no role at all. Each role trusts the cluster's OIDC provider for exactly one
namespace/service account (`sub`) and the STS audience (`aud`); nothing gets static keys, and no
account mounts a Kubernetes API token (no workload talks to the API).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.components import grants
from infra.components.k8s import name_of

DB_SA = grants.service_account("db")
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"


@dataclass(frozen=True)
class AccessArgs:
    namespace: pulumi.Input[str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]  # without https://
    kms_key_arn: pulumi.Input[str]
    landing_bucket_arn: pulumi.Input[str]
    backup_bucket_arn: pulumi.Input[str]
    # Which identities this stack has (grants.identities): the restore Job's only in a rebuild.
    identities: tuple[str, ...] = field(
        default_factory=lambda: grants.identities(restore=False))


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


def role_policy(identity: str, landing_bucket_arn: pulumi.Input[str],
                backup_bucket_arn: pulumi.Input[str],
                kms_key_arn: pulumi.Input[str]) -> pulumi.Output[str]:
    """The identity's row of grants.GRANTS as an IAM policy document."""
    return pulumi.Output.all(landing_bucket_arn, backup_bucket_arn, kms_key_arn).apply(
        lambda a: json.dumps(grants.policy_document(
            identity, {"landing": a[0], "backup": a[1]}, a[2])))


class Access(pulumi.ComponentResource):
    """IRSA roles and service accounts. Needs a Kubernetes provider in `opts.providers`."""

    role_arns: dict[str, pulumi.Output[str]]  # identity -> role ARN (identities with a row)
    service_accounts: dict[str, pulumi.Output[str]]  # service account name -> its name (Output)

    def __init__(self, name: str, args: AccessArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickstack:access:Access", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        def irsa_role(identity: str, sa: str) -> aws.iam.Role:
            trust = pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer,
                                      args.namespace).apply(
                lambda a: trust_policy(a[0], a[1], a[2], sa))
            role = aws.iam.Role(f"{name}-{identity}", assume_role_policy=trust,
                                description=f"tickstack {identity} (IRSA: {sa})", opts=child)
            aws.iam.RolePolicy(f"{name}-{identity}-policy", role=role.id,
                               policy=role_policy(identity, args.landing_bucket_arn,
                                                  args.backup_bucket_arn, args.kms_key_arn),
                               opts=child)
            return role

        def service_account(sa: str, role: aws.iam.Role | None) -> pulumi.Output[str]:
            meta: dict = {"name": sa, "namespace": args.namespace,
                          "labels": {"app.kubernetes.io/part-of": "tickstack"}}
            if role is not None:
                meta["annotations"] = {IRSA_ANNOTATION: role.arn}
            acct = k8s.core.v1.ServiceAccount(
                f"{name}-sa-{sa}", metadata=meta,
                automount_service_account_token=False, opts=child)
            return name_of(acct)

        self.role_arns = {}
        self.service_accounts = {}
        for identity in args.identities:
            sa = grants.service_account(identity)
            role = irsa_role(identity, sa) if grants.GRANTS[identity] else None
            if role is not None:
                self.role_arns[identity] = role.arn
            self.service_accounts[sa] = service_account(sa, role)
        self.register_outputs({"roleArns": self.role_arns})
