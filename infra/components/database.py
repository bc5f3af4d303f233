"""The primary database (Kubernetes): tickstack's primary image as a one-pod StatefulSet.

The image (infra/images/primary/Dockerfile) carries exactly the version table's PostgreSQL,
TimescaleDB with TSL, pgvector and pgBackRest (scripts/versions.env), and is deployed by the
digest CI recorded there (infra/versions.py `primary_image`).

Its configuration comes from the one renderer the local environment also uses
(infra/configs.py): `tickstack.conf` (postgres_conf(role="primary")) and `pgbackrest.conf`
(pgbackrest_conf with the cloud's BackupRepo: IRSA web identity, the real S3 endpoint, the
stack's KMS key). WAL is archived to the backup bucket by pgBackRest inside the pod, with the
pod's IRSA role. The superuser password is a generated secret (Kubernetes Secret, never a
ConfigMap).

Disaster recovery: with `restore` set, an init container restores the data directory from the
backup bucket to the target time before Postgres starts (only when the volume is empty: it
never restores over an existing database), and Postgres replays WAL up to the target and
promotes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import configs
from infra.components import k8s as kx
from infra.stack_config import Resources, Restore

NAME = "tickstack-db"
POD = f"{NAME}-0"  # StatefulSet pod name: the single primary
CONTAINER = "postgres"
PORT = 5432
DATABASE = "tickstack"
SUPERUSER = "postgres"

PGDATA_MOUNT = "/home/postgres/pgdata"
PGDATA = f"{PGDATA_MOUNT}/data"
SOCKET_DIR = "/var/run/postgresql"
PG_CONFIG_DIR = "/etc/tickstack/postgres"
PGBACKREST_DIR = "/etc/pgbackrest"
PGBACKREST_CONF = f"{PGBACKREST_DIR}/pgbackrest.conf"
CLOUD_PATHS = configs.PgBackRestPaths(log="/var/log/pgbackrest", lock="/tmp/pgbackrest",
                                      spool="/var/spool/pgbackrest")
CLOUD_PG = configs.PrimaryPg(data_dir=PGDATA, port=PORT, socket_dir=SOCKET_DIR, user=SUPERUSER)


@dataclass(frozen=True)
class BackupTarget:
    bucket: str
    region: str
    kms_key_arn: str
    retention_full: int
    retention_diff: int


def cloud_backup_repo(t: BackupTarget) -> configs.BackupRepo:
    """pgBackRest's repository in the cloud: the real S3 endpoint, IRSA, SSE-KMS."""
    return configs.BackupRepo(
        bucket=t.bucket, region=t.region, endpoint=f"s3.{t.region}.amazonaws.com",
        uri_style="host", verify_tls=True, key_type="web-id",
        retention_full=t.retention_full, retention_diff=t.retention_diff,
        kms_key_id=t.kms_key_arn,
    )


def render_primary_files(t: BackupTarget, tuning: configs.PgTuning) -> dict[str, str]:
    """Every file the primary's pod reads, rendered through infra/configs.py. Pure."""
    settings = configs.postgres_conf(role="primary", pgbackrest_config=PGBACKREST_CONF,
                                     tuning=tuning)
    return {
        "pgbackrest.conf": configs.pgbackrest_conf(cloud_backup_repo(t), CLOUD_PG, CLOUD_PATHS),
        # The renderer's settings, byte for byte what the local environment writes.
        "tickstack.conf": configs.postgres_conf_text(settings),
        # Cloud-only bootstrap: where to listen, which hba, then the shared settings.
        "postgresql.conf": "\n".join([
            "# Rendered by tickstack (infra/components/database.py). Do not edit.",
            "listen_addresses = '*'",
            f"unix_socket_directories = '{SOCKET_DIR}'",
            f"hba_file = '{PG_CONFIG_DIR}/pg_hba.conf'",
            "include = 'tickstack.conf'",
            "",
        ]),
        # Peer on the socket for the postgres OS user (pgBackRest, probes); scram over TCP,
        # which the NetworkPolicies already limit to tickstack's own pods.
        "pg_hba.conf": "\n".join([
            "# Rendered by tickstack (infra/components/database.py). Do not edit.",
            "local all postgres peer",
            "local all all scram-sha-256",
            "host all all 0.0.0.0/0 scram-sha-256",
            "host all all ::/0 scram-sha-256",
            "",
        ]),
    }


def restore_args(restore: Restore) -> list[str]:
    """pgBackRest PITR restore into the (empty) data directory, then promote at the target."""
    args = [f"--config={PGBACKREST_CONF}", f"--stanza={configs.STANZA}", "--type=time",
            f"--target={restore.target_iso}", "--target-action=promote",
            f"--recovery-option=restore_command={configs.restore_command(PGBACKREST_CONF)}"]
    if restore.backup_set:
        args.append(f"--set={restore.backup_set}")
    return args + ["restore"]


# Runs as `sh -c SCRIPT restore <pgbackrest args...>`: never restores over existing data.
RESTORE_SCRIPT = (
    'set -eu; if [ -s "$PGDATA/PG_VERSION" ]; then '
    'echo "tickstack restore: $PGDATA holds a database; not restoring over it"; exit 0; fi; '
    'mkdir -p "$PGDATA"; chmod 700 "$PGDATA"; '
    'echo "tickstack restore: pgbackrest $*"; exec pgbackrest "$@"'
)
# postStart: once Postgres answers, make sure the stanza exists (idempotent), so WAL archiving
# works from the first boot; bounded, and never fails the container.
STANZA_SCRIPT = (
    f"for i in $(seq 1 90); do pg_isready -q -h {SOCKET_DIR} -p {PORT} && break; sleep 2; "
    f"done; pgbackrest --config={PGBACKREST_CONF} --stanza={configs.STANZA} stanza-create "
    f"> /tmp/stanza-create.log 2>&1 || true"
)


@dataclass(frozen=True)
class PrimaryArgs:
    namespace: pulumi.Input[str]
    service_account: pulumi.Input[str]
    image: str
    storage_size: str
    storage_class: str | None
    resources: Resources
    tuning: configs.PgTuning
    backup_bucket: pulumi.Input[str]
    region: str
    kms_key_arn: pulumi.Input[str]
    retention_full: int
    retention_diff: int
    max_unavailable: int
    startup_seconds: int
    restore: Restore | None = None


class Primary(pulumi.ComponentResource):
    """Needs a Kubernetes provider in `opts.providers`."""

    host: pulumi.Output[str]
    superuser_password: pulumi.Output[str]
    statefulset: k8s.apps.v1.StatefulSet
    files: pulumi.Output[dict]

    def __init__(self, name: str, args: PrimaryArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickstack:database:Primary", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        lbl = kx.labels("database", name=NAME)
        sel = kx.selector("database", name=NAME)

        password = random.RandomPassword(f"{name}-superuser-password", length=32,
                                         special=False, opts=child)
        self.superuser_password = password.result
        secret = k8s.core.v1.Secret(
            f"{name}-superuser",
            metadata={"name": f"{NAME}-superuser", "namespace": ns, "labels": lbl},
            type="Opaque", string_data={"POSTGRES_PASSWORD": password.result}, opts=child)

        self.files = pulumi.Output.all(args.backup_bucket, args.kms_key_arn).apply(
            lambda a: render_primary_files(
                BackupTarget(bucket=a[0], region=args.region, kms_key_arn=a[1],
                             retention_full=args.retention_full,
                             retention_diff=args.retention_diff),
                args.tuning))
        pg_conf = k8s.core.v1.ConfigMap(
            f"{name}-postgres-config",
            metadata={"name": f"{NAME}-postgres", "namespace": ns, "labels": lbl},
            data=self.files.apply(lambda f: {k: f[k] for k in
                                             ("postgresql.conf", "tickstack.conf", "pg_hba.conf")}),
            opts=child)
        br_conf = k8s.core.v1.ConfigMap(
            f"{name}-pgbackrest-config",
            metadata={"name": f"{NAME}-pgbackrest", "namespace": ns, "labels": lbl},
            data=self.files.apply(lambda f: {"pgbackrest.conf": f["pgbackrest.conf"]}),
            opts=child)
        # A config change rolls the pod (ConfigMaps are not re-read by a running Postgres).
        config_hash = self.files.apply(lambda f: hashlib.sha256(
            "\0".join(f"{k}={v}" for k, v in sorted(f.items())).encode()).hexdigest())

        headless = k8s.core.v1.Service(
            f"{name}-headless",
            metadata={"name": f"{NAME}-headless", "namespace": ns, "labels": lbl},
            spec={"cluster_ip": "None", "selector": sel, "publish_not_ready_addresses": True,
                  "ports": [{"name": "postgres", "port": PORT, "target_port": "postgres"}]},
            opts=child)
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": NAME, "namespace": ns, "labels": lbl},
            spec={"type": "ClusterIP", "selector": sel,
                  "ports": [{"name": "postgres", "port": PORT, "target_port": "postgres"}]},
            opts=child)
        self.host = pulumi.Output.concat(kx.name_of(service), ".", ns, ".svc.cluster.local")

        volumes, mounts = self._volumes()
        security = kx.container_security_context(kx.DB_UID)
        env = [
            {"name": "PGDATA", "value": PGDATA},
            {"name": "PGBACKREST_CONFIG", "value": PGBACKREST_CONF},
            {"name": "POSTGRES_PASSWORD",
             "value_from": {"secret_key_ref": {"name": kx.name_of(secret),
                                               "key": "POSTGRES_PASSWORD"}}},
        ]
        pg_isready = ["pg_isready", "-q", "-h", SOCKET_DIR, "-p", str(PORT), "-U", SUPERUSER]
        container = {
            "name": CONTAINER,
            "image": args.image,
            "image_pull_policy": "IfNotPresent",
            "args": ["postgres", "-c", f"config_file={PG_CONFIG_DIR}/postgresql.conf"],
            "env": env,
            "ports": [{"name": "postgres", "container_port": PORT, "protocol": "TCP"}],
            "resources": args.resources.k8s(),
            "security_context": security,
            "volume_mounts": mounts,
            "startup_probe": {"exec": {"command": pg_isready}, "period_seconds": 10,
                              "timeout_seconds": 5,
                              "failure_threshold": max(6, args.startup_seconds // 10)},
            "readiness_probe": {"exec": {"command": pg_isready}, "period_seconds": 10,
                                "timeout_seconds": 5, "failure_threshold": 3},
            "liveness_probe": {"exec": {"command": pg_isready}, "period_seconds": 20,
                               "timeout_seconds": 5, "failure_threshold": 6},
            "lifecycle": {"post_start": {"exec": {"command": ["sh", "-c", STANZA_SCRIPT]}}},
        }
        init_containers = []
        if args.restore is not None:
            init_containers.append({
                "name": "pgbackrest-restore",
                "image": args.image,
                "image_pull_policy": "IfNotPresent",
                "command": ["sh", "-c", RESTORE_SCRIPT, "restore", *restore_args(args.restore)],
                "env": [{"name": "PGDATA", "value": PGDATA}],
                "resources": args.resources.k8s(),
                "security_context": security,
                "volume_mounts": mounts,
            })
        pod_annotations = {"tickstack.io/config-sha256": config_hash}
        if args.restore is not None:
            pod_annotations["tickstack.io/restore-target"] = args.restore.target_iso
        pvc_spec: dict = {"access_modes": ["ReadWriteOnce"],
                          "resources": {"requests": {"storage": args.storage_size}}}
        if args.storage_class:
            pvc_spec["storage_class_name"] = args.storage_class
        self.statefulset = k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata={"name": NAME, "namespace": ns, "labels": lbl},
            spec={
                "service_name": kx.name_of(headless),
                "replicas": 1,
                "selector": {"match_labels": sel},
                "pod_management_policy": "OrderedReady",
                "update_strategy": {"type": "RollingUpdate"},
                # The data outlives the StatefulSet: deleting or scaling keeps the volume.
                "persistent_volume_claim_retention_policy": {"when_deleted": "Retain",
                                                             "when_scaled": "Retain"},
                "template": {
                    "metadata": {"labels": lbl, "annotations": pod_annotations},
                    "spec": {
                        "service_account_name": args.service_account,
                        "automount_service_account_token": False,
                        "enable_service_links": False,
                        "security_context": kx.pod_security_context(kx.DB_UID),
                        # Fast shutdown and the last WAL segment archived.
                        "termination_grace_period_seconds": 120,
                        "init_containers": init_containers,
                        "containers": [container],
                        "volumes": [*volumes,
                                    {"name": "postgres-config",
                                     "config_map": {"name": kx.name_of(pg_conf)}},
                                    {"name": "pgbackrest-config",
                                     "config_map": {"name": kx.name_of(br_conf)}}],
                    },
                },
                "volume_claim_templates": [{"metadata": {"name": "data", "labels": lbl},
                                            "spec": pvc_spec}],
            },
            opts=child)
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": NAME, "namespace": ns, "labels": lbl},
            spec={"max_unavailable": args.max_unavailable, "selector": {"match_labels": sel}},
            opts=child)
        self.register_outputs({"host": self.host, "pod": POD})

    @staticmethod
    def _volumes() -> tuple[list[dict], list[dict]]:
        volumes, mounts = [], [
            {"name": "data", "mount_path": PGDATA_MOUNT},
            {"name": "postgres-config", "mount_path": PG_CONFIG_DIR, "read_only": True},
            {"name": "pgbackrest-config", "mount_path": PGBACKREST_DIR, "read_only": True},
        ]
        for v, m in (kx.scratch("tmp", "/tmp", "1Gi"),
                     kx.scratch("run", SOCKET_DIR, "16Mi"),
                     kx.scratch("pgbackrest-log", CLOUD_PATHS.log, "512Mi"),
                     kx.scratch("pgbackrest-spool", CLOUD_PATHS.spool, "4Gi"),
                     kx.scratch("shm", "/dev/shm", "1Gi", medium="Memory")):
            volumes.append(v)
            mounts.append(m)
        return volumes, mounts
