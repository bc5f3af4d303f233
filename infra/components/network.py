"""NetworkPolicies: deny everything in the namespace, then allow exactly what each pod needs.

  every pod            -> cluster DNS (kube-system/kube-dns, 53 UDP/TCP)
  db clients           -> the primary, 5432 (and the primary admits only them)
  backup clients       -> pgBackRest's TLS server in the primary's pod, 8432
  replica clients      -> the VPC (RDS), 5432
  the primary          -> 443 outside the cluster (S3 for pgBackRest, STS for IRSA)
  https-egress workers -> 443 outside the cluster (S3 landing, STS, the API server for backups)
  the stream ingest    -> the exchange's websocket port
Instance metadata (169.254.169.254) is excluded: pods get AWS credentials through IRSA only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components import k8s as kx
from infra.components.database import NAME as DB_NAME
from infra.components.database import PGBACKREST_PORT
from infra.components.database import PORT as DB_PORT

METADATA_CIDR = "169.254.169.254/32"
ANYWHERE = {"ip_block": {"cidr": "0.0.0.0/0", "except_": [METADATA_CIDR]}}


@dataclass(frozen=True)
class NetworkArgs:
    namespace: pulumi.Input[str]
    vpc_cidr: pulumi.Input[str]
    stream_port: int


class NetworkPolicies(pulumi.ComponentResource):
    """Needs a Kubernetes provider in `opts.providers`."""

    def __init__(self, name: str, args: NetworkArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickstack:network:NetworkPolicies", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        db = kx.selector("database", name=DB_NAME)

        def policy(key: str, pod_selector: dict, *, ingress: list | None = None,
                   egress: list | None = None) -> None:
            types = (["Ingress"] if ingress is not None else []) + (
                ["Egress"] if egress is not None else [])
            spec: dict = {"pod_selector": pod_selector, "policy_types": types}
            if ingress is not None:
                spec["ingress"] = ingress
            if egress is not None:
                spec["egress"] = egress
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{key}",
                metadata={"name": f"tickstack-{key}", "namespace": args.namespace,
                          "labels": {"app.kubernetes.io/part-of": kx.PART_OF}},
                spec=spec, opts=child)

        policy("default-deny", {}, ingress=[], egress=[])
        policy("allow-dns", {}, egress=[{
            "to": [{"namespace_selector": {"match_labels": {
                        "kubernetes.io/metadata.name": "kube-system"}},
                    "pod_selector": {"match_labels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }])
        policy("database-ingress", {"match_labels": db}, ingress=[{
            "from_": [{"pod_selector": {"match_labels": {kx.DB_CLIENT: "true"}}}],
            "ports": [{"protocol": "TCP", "port": DB_PORT}],
        }, {
            "from_": [{"pod_selector": {"match_labels": {kx.BACKUP_CLIENT: "true"}}}],
            "ports": [{"protocol": "TCP", "port": PGBACKREST_PORT}],
        }])
        policy("database-egress-s3", {"match_labels": db}, egress=[{
            "to": [ANYWHERE], "ports": [{"protocol": "TCP", "port": 443}],
        }])
        policy("db-clients-egress", {"match_labels": {kx.DB_CLIENT: "true"}}, egress=[{
            "to": [{"pod_selector": {"match_labels": db}}],
            "ports": [{"protocol": "TCP", "port": DB_PORT}],
        }])
        policy("backup-clients-egress", {"match_labels": {kx.BACKUP_CLIENT: "true"}}, egress=[{
            "to": [{"pod_selector": {"match_labels": db}}],
            "ports": [{"protocol": "TCP", "port": PGBACKREST_PORT}],
        }])
        policy("replica-clients-egress", {"match_labels": {kx.REPLICA_CLIENT: "true"}},
               egress=[{"to": [{"ip_block": {"cidr": args.vpc_cidr}}],
                        "ports": [{"protocol": "TCP", "port": DB_PORT}]}])
        policy("https-egress", {"match_labels": {kx.HTTPS_EGRESS: "true"}}, egress=[{
            "to": [ANYWHERE], "ports": [{"protocol": "TCP", "port": 443}],
        }])
        if args.stream_port != 443:
            policy("stream-egress", {"match_labels": kx.selector("ingest")}, egress=[{
                "to": [ANYWHERE], "ports": [{"protocol": "TCP", "port": args.stream_port}],
            }])
        self.register_outputs({})
