"""The Kubernetes cluster as an input: a stack reference or explicit config, never created here.

Gives the program a Kubernetes provider for that cluster, the namespace tickstack lives in
(Pod Security Standard `restricted`, enforced), the EKS OIDC provider for IRSA and the network
the RDS replica joins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.k8s import name_of


@dataclass(frozen=True)
class ClusterArgs:
    namespace: str
    # org/project/stack whose outputs describe the cluster (kubeconfig, oidcProviderArn, ...).
    cluster_stack: str | None = None
    # Explicit values; each overrides the stack reference's output of the same name.
    kubeconfig: pulumi.Input[str] | None = None
    oidc_provider_arn: str | None = None
    oidc_provider_url: str | None = None
    vpc_id: str | None = None
    vpc_cidr: str | None = None
    private_subnet_ids: list[str] | None = None
    cluster_security_group_id: str | None = None
    # protectData: the namespace holds the primary's volume claim; renaming or deleting it
    # would delete the claim, so it is protected and kept if Pulumi ever deletes it.
    protect: bool = False


class Cluster(pulumi.ComponentResource):
    provider: k8s.Provider
    namespace: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]  # the provider URL without https://, as IAM conditions use it
    vpc_id: pulumi.Output[str]
    vpc_cidr: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[Any]
    cluster_security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickstack:cluster:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ref = (pulumi.StackReference(f"{name}-ref", args.cluster_stack, opts=child)
               if args.cluster_stack else None)

        def value(given: Any, output_name: str) -> pulumi.Output[Any]:
            if given is not None:
                return pulumi.Output.from_input(given)
            assert ref is not None, "config validation guarantees a stack reference here"
            return ref.require_output(output_name)

        kubeconfig = pulumi.Output.secret(value(args.kubeconfig, "kubeconfig"))
        self.oidc_provider_arn = value(args.oidc_provider_arn, "oidcProviderArn")
        self.oidc_issuer = value(args.oidc_provider_url, "oidcProviderUrl").apply(
            lambda u: str(u).removeprefix("https://"))
        self.vpc_id = value(args.vpc_id, "vpcId")
        self.vpc_cidr = value(args.vpc_cidr, "vpcCidr")
        self.private_subnet_ids = value(args.private_subnet_ids, "privateSubnetIds")
        self.cluster_security_group_id = value(args.cluster_security_group_id,
                                               "clusterSecurityGroupId")

        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=kubeconfig, opts=child)
        restricted = "restricted"
        ns = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": args.namespace,
                "labels": {
                    "app.kubernetes.io/part-of": "tickstack",
                    "pod-security.kubernetes.io/enforce": restricted,
                    "pod-security.kubernetes.io/audit": restricted,
                    "pod-security.kubernetes.io/warn": restricted,
                },
            },
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider,
                                        protect=args.protect, retain_on_delete=True),
        )
        # Everything namespaced uses this output, so it is created after the namespace.
        self.namespace = name_of(ns)
        self.register_outputs({
            "namespace": self.namespace,
            "oidcProviderArn": self.oidc_provider_arn,
            "vpcId": self.vpc_id,
        })
