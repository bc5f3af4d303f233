"""Kubernetes building blocks every tickstack pod shares: labels and the hardened pod shape.

Every pod runs as a non-root user with a read-only root filesystem, all capabilities dropped,
no privilege escalation, the runtime's default seccomp profile, and resource limits; writable
paths are explicit emptyDir volumes. The namespace enforces the `restricted` Pod Security
Standard, so a pod that forgets any of this is refused by the API server too.
"""

from __future__ import annotations

from typing import Any

PART_OF = "tickstack"
COMPONENT = "app.kubernetes.io/component"
# Labels the NetworkPolicies select on (network.py): what a pod may talk to.
DB_CLIENT = "tickstack.io/db-client"  # may reach the primary on 5432
REPLICA_CLIENT = "tickstack.io/replica-client"  # may reach RDS on 5432 (VPC CIDR)
HTTPS_EGRESS = "tickstack.io/https-egress"  # may reach S3/STS/Binance on 443
BACKUP_CLIENT = "tickstack.io/backup-client"  # may reach pgBackRest's TLS server (8432)
# The workload a pod belongs to (infra/components/grants.py): its service account and IAM row.
WORKLOAD = "tickstack.io/workload"

DB_UID = 1000  # the `postgres` user of the primary image (infra/images/primary/Dockerfile)
WORKER_UID = 10001  # the worker image's user (workers/Dockerfile)


def labels(component: str, *, name: str = "tickstack-worker", **flags: bool) -> dict[str, str]:
    out = {
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/name": name,
        COMPONENT: component,
    }
    flag_labels = {"db_client": DB_CLIENT, "replica_client": REPLICA_CLIENT,
                   "https_egress": HTTPS_EGRESS, "backup_client": BACKUP_CLIENT}
    for k, v in flags.items():
        if v:
            out[flag_labels[k]] = "true"
    return out


def selector(component: str, name: str = "tickstack-worker") -> dict[str, str]:
    return {"app.kubernetes.io/name": name, COMPONENT: component}


def pod_security_context(uid: int) -> dict[str, Any]:
    return {
        "run_as_non_root": True,
        "run_as_user": uid,
        "run_as_group": uid,
        "fs_group": uid,
        "fs_group_change_policy": "OnRootMismatch",
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def container_security_context(uid: int) -> dict[str, Any]:
    return {
        "run_as_non_root": True,
        "run_as_user": uid,
        "run_as_group": uid,
        "read_only_root_filesystem": True,
        "allow_privilege_escalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def scratch(name: str, mount: str, size: str = "256Mi",
            medium: str | None = None) -> tuple[dict, dict]:
    """An emptyDir volume and its mount: the only writable paths besides data volumes."""
    empty: dict[str, Any] = {"size_limit": size}
    if medium:
        empty["medium"] = medium
    return {"name": name, "empty_dir": empty}, {"name": name, "mount_path": mount}


def env_list(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in sorted(values.items())]


def name_of(resource: Any):
    """metadata.name of a Kubernetes resource, as an Output (creates a dependency on it)."""
    return resource.metadata.apply(lambda m: m["name"] if isinstance(m, dict) else m.name)
