"""The primary database (Kubernetes): tickstack's primary image as a one-pod StatefulSet.

The image (infra/images/primary/Dockerfile) carries exactly the version table's PostgreSQL,
TimescaleDB with TSL, pgvector and pgBackRest (scripts/versions.env), and is deployed by the
digest CI recorded there (infra/versions.py `primary_image`).

Its configuration comes from the one renderer the local environment also uses
(infra/configs.py): `tickstack.conf` (postgres_conf(role="primary")), `pg_hba.conf` (TLS only
over TCP) and `pgbackrest.conf` (pgbackrest_conf with the cloud's BackupRepo: IRSA web
identity, the real S3 endpoint, the stack's KMS key). WAL is archived to the backup bucket by
pgBackRest inside the pod, with the pod's IRSA role. The superuser password is a generated
secret (Kubernetes Secret, never a ConfigMap).

TLS: the stack's own CA (pulumi_tls, kept in the state, which the secrets provider encrypts)
signs the server's certificate (the Service's names) and the backup workers' client
certificate, as CloudNativePG and Crunchy PGO do by default. Postgres serves TLS only
(`hostssl`); workers verify it (`sslmode=verify-full`, the CA from the `tickstack-ca`
ConfigMap).

Backups: pgBackRest's TLS server runs as a sidecar in the pod (own resources; Crunchy PGO's
design), and the backup CronJobs take backups through it with their client certificate — no
`pods/exec`, no backup streamed through the API server (docs/deploying/backups-in-kubernetes.md).

Data protection (`protectData`): the StatefulSet is protected and retained on delete, its
volume claim template is never changed in place (`ignoreChanges`: a change would replace the
StatefulSet), the volume's StorageClass keeps volumes (`reclaimPolicy: Retain`) and allows
expansion, and a size change grows the existing claim (a PVC patch).

Major upgrade (`primaryMajorUpgrade`, docs/upgrading.md): the StatefulSet is scaled to 0 and
a Job in the same image mounts the primary's volume and runs the upgrade script the local
environment runs too (scripts/pg_major_upgrade.sh, in the image as tickstack-major-upgrade) with
the primary's pgBackRest configuration (its stanza-upgrade); switching it off brings the
primary back on the upgraded directory.

Disaster recovery: with `restore` set, an init container restores the data directory from the
backup bucket to the target time before Postgres starts (only when the volume is empty: it
never restores over an existing database), and Postgres replays WAL up to the target and
promotes.

This module is the pure part: names, paths, the rendered files, the restore command and the
pod's containers. The Pulumi component that declares the resources is primary.py, its
certificates primary_tls.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi

from infra import configs
from infra.components import k8s as kx
from infra.stack_config import Resources, Restore

NAME = "tickstack-db"
POD = f"{NAME}-0"  # StatefulSet pod name: the single primary
CONTAINER = "postgres"
SIDECAR = "pgbackrest"
PORT = 5432
PGBACKREST_PORT = configs.PGBACKREST_TLS_PORT
DATABASE = configs.DATABASE
SUPERUSER = configs.PRIMARY_ADMIN
PVC = f"data-{POD}"  # the claim the StatefulSet makes from its volume claim template

PGDATA_MOUNT = "/home/postgres/pgdata"
PGDATA = f"{PGDATA_MOUNT}/data"
SOCKET_DIR = "/var/run/postgresql"
PG_CONFIG_DIR = "/etc/tickstack/postgres"
PGBACKREST_DIR = "/etc/pgbackrest"
PGBACKREST_CONF = f"{PGBACKREST_DIR}/pgbackrest.conf"
TLS_DIR = "/etc/tickstack/tls"  # the server's certificate, key and CA (Secret)
# The superuser's password (Secret volume): the image's entry point reads POSTGRES_PASSWORD_FILE.
SUPERUSER_DIR = "/etc/tickstack/superuser"
SUPERUSER_PASSWORD_KEY = "POSTGRES_PASSWORD"
SERVER_TLS = configs.TlsFiles(cert=f"{TLS_DIR}/tls.crt", key=f"{TLS_DIR}/tls.key",
                              ca=f"{TLS_DIR}/ca.crt")
CLOUD_PATHS = configs.PgBackRestPaths(log="/var/log/pgbackrest", lock="/tmp/pgbackrest",
                                      spool="/var/spool/pgbackrest")
CLOUD_PG = configs.PrimaryPg(data_dir=PGDATA, port=PORT, socket_dir=SOCKET_DIR, user=SUPERUSER)
CLOUD_SERVER = configs.PgBackRestServer(address="0.0.0.0", tls=SERVER_TLS, port=PGBACKREST_PORT)
# The backup workers' side (workers.py mounts these): client certificate and their own file.
CLIENT_DIR = "/etc/tickstack/pgbackrest-client"
CLIENT_CONF = f"{CLIENT_DIR}/pgbackrest.conf"
CLIENT_TLS_DIR = "/etc/tickstack/pgbackrest-client-tls"
CLIENT_TLS = configs.TlsFiles(cert=f"{CLIENT_TLS_DIR}/tls.crt", key=f"{CLIENT_TLS_DIR}/tls.key",
                              ca=f"{CLIENT_TLS_DIR}/ca.crt")
CLIENT_PATHS = configs.PgBackRestPaths(log="/tmp/pgbackrest/log", lock="/tmp/pgbackrest/lock",
                                       spool="/tmp/pgbackrest/spool")


def service_host(namespace: str) -> str:
    """The name workers connect to (the ClusterIP Service); in the server certificate."""
    return f"{NAME}.{namespace}.svc.cluster.local"


def server_dns_names(namespace: str) -> list[str]:
    return [NAME, f"{NAME}.{namespace}", f"{NAME}.{namespace}.svc", service_host(namespace),
            f"{POD}.{NAME}-headless.{namespace}.svc.cluster.local"]


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


def render_primary_files(t: BackupTarget, tuning: configs.PgTuning,
                         namespace: str) -> dict[str, str]:
    """Every file the primary's pod and the backup workers read, rendered through
    infra/configs.py. Pure."""
    settings = configs.postgres_conf(role="primary", pgbackrest_config=PGBACKREST_CONF,
                                     tuning=tuning, tls=SERVER_TLS)
    repo = cloud_backup_repo(t)
    return {
        "pgbackrest.conf": configs.pgbackrest_conf(repo, CLOUD_PG, CLOUD_PATHS,
                                                   server=CLOUD_SERVER),
        "pgbackrest-client.conf": configs.pgbackrest_conf(
            repo, CLOUD_PG, CLIENT_PATHS,
            remote=configs.PgBackRestRemote(host=service_host(namespace), tls=CLIENT_TLS,
                                            port=PGBACKREST_PORT)),
        # The renderer's settings, byte for byte what the local environment writes.
        "tickstack.conf": configs.postgres_conf_text(settings),
        # The file the server starts with (outside PGDATA, as locally): where to listen (the
        # cloud's), the pg_hba.conf beside it, then the shared settings.
        "postgresql.conf": configs.postgres_main_conf(PG_CONFIG_DIR, listen_addresses="*",
                                                      socket_dir=SOCKET_DIR),
        # TLS only over TCP, which the NetworkPolicies also limit to tickstack's own pods.
        "pg_hba.conf": configs.pg_hba(["0.0.0.0/0", "::/0"]),
    }


def restore_args(restore: Restore) -> list[str]:
    """pgBackRest PITR restore into the (empty) data directory, then promote at the target."""
    args = [f"--config={PGBACKREST_CONF}", f"--stanza={configs.STANZA}", "--type=time",
            f"--target={restore.target_iso}", "--target-action=promote",
            f"--recovery-option=restore_command={configs.restore_command(PGBACKREST_CONF)}"]
    if restore.backup_set:
        args.append(f"--set={restore.backup_set}")
    return args + ["restore"]


# Runs as `sh -c SCRIPT restore <pgbackrest args...>`: never restores over existing data. The
# server's configuration is outside PGDATA (the ConfigMap); what ALTER SYSTEM left in the
# restored postgresql.auto.conf about who may connect is removed before the server starts.
RESTORE_SCRIPT = (
    'set -eu; if [ -s "$PGDATA/PG_VERSION" ]; then '
    'echo "tickstack restore: $PGDATA holds a database; not restoring over it"; exit 0; fi; '
    'mkdir -p "$PGDATA"; chmod 700 "$PGDATA"; '
    'echo "tickstack restore: pgbackrest $*"; pgbackrest "$@"; '
    + configs.strip_security_settings_sh('"$PGDATA/postgresql.auto.conf"')
)


# --- the pod (pure: what the StatefulSet's template holds) -----------------------------------


def volumes_and_mounts() -> tuple[list[dict], list[dict]]:
    """The scratch volumes (emptyDir) and every mount the pod's containers share; the
    ConfigMap and Secret volumes behind the first mounts are the component's."""
    volumes, mounts = [], [
        {"name": "data", "mount_path": PGDATA_MOUNT},
        {"name": "postgres-config", "mount_path": PG_CONFIG_DIR, "read_only": True},
        {"name": "pgbackrest-config", "mount_path": PGBACKREST_DIR, "read_only": True},
        {"name": "tls", "mount_path": TLS_DIR, "read_only": True},
    ]
    for v, m in (kx.scratch("tmp", "/tmp", "1Gi"),
                 kx.scratch("run", SOCKET_DIR, "16Mi"),
                 kx.scratch("pgbackrest-log", CLOUD_PATHS.log, "512Mi"),
                 kx.scratch("pgbackrest-spool", CLOUD_PATHS.spool, "4Gi"),
                 kx.scratch("shm", "/dev/shm", "1Gi", medium="Memory")):
        volumes.append(v)
        mounts.append(m)
    return volumes, mounts


def postgres_container(image: str, resources: Resources, startup_seconds: int,
                       mounts: list[dict]) -> dict:
    """The database container; only it reads the password (initdb on an empty volume)."""
    pg_mounts = [*mounts, {"name": "superuser", "mount_path": SUPERUSER_DIR,
                           "read_only": True}]
    env = [
        {"name": "PGDATA", "value": PGDATA},
        {"name": "PGBACKREST_CONFIG", "value": PGBACKREST_CONF},
        # A file, never an environment variable (inherited by every child process).
        {"name": "POSTGRES_PASSWORD_FILE",
         "value": f"{SUPERUSER_DIR}/{SUPERUSER_PASSWORD_KEY}"},
    ]
    pg_isready = ["pg_isready", "-q", "-h", SOCKET_DIR, "-p", str(PORT), "-U", SUPERUSER]
    return {
        "name": CONTAINER,
        "image": image,
        "image_pull_policy": "IfNotPresent",
        "args": ["postgres", *configs.postgres_start_options(PG_CONFIG_DIR)],
        "env": env,
        "ports": [{"name": "postgres", "container_port": PORT, "protocol": "TCP"}],
        "resources": resources.k8s(),
        "security_context": kx.container_security_context(kx.DB_UID),
        "volume_mounts": pg_mounts,
        "startup_probe": {"exec": {"command": pg_isready}, "period_seconds": 10,
                          "timeout_seconds": 5,
                          "failure_threshold": max(6, startup_seconds // 10)},
        "readiness_probe": {"exec": {"command": pg_isready}, "period_seconds": 10,
                            "timeout_seconds": 5, "failure_threshold": 3},
        "liveness_probe": {"exec": {"command": pg_isready}, "period_seconds": 20,
                           "timeout_seconds": 5, "failure_threshold": 6},
    }


def pgbackrest_sidecar(image: str, resources: Resources, mounts: list[dict]) -> dict:
    """pgBackRest's TLS server: backups are taken through it (no pods/exec), with their own
    CPU and memory, never inside the database container's limits."""
    return {
        "name": SIDECAR,
        "image": image,
        "image_pull_policy": "IfNotPresent",
        "command": ["pgbackrest", f"--config={PGBACKREST_CONF}", "server"],
        "env": [{"name": "PGDATA", "value": PGDATA}],
        "ports": [{"name": "pgbackrest", "container_port": PGBACKREST_PORT,
                   "protocol": "TCP"}],
        "resources": resources.k8s(),
        "security_context": kx.container_security_context(kx.DB_UID),
        "volume_mounts": mounts,
        "readiness_probe": {"tcp_socket": {"port": "pgbackrest"}, "period_seconds": 10},
        "liveness_probe": {"tcp_socket": {"port": "pgbackrest"}, "period_seconds": 20,
                           "failure_threshold": 6},
    }


def init_containers(image: str, resources: Resources, restore: Restore | None,
                    mounts: list[dict]) -> list[dict]:
    """With `restore` set: restore the (empty) data directory before Postgres starts."""
    if restore is None:
        return []
    return [{
        "name": "pgbackrest-restore",
        "image": image,
        "image_pull_policy": "IfNotPresent",
        "command": ["sh", "-c", RESTORE_SCRIPT, "restore", *restore_args(restore)],
        "env": [{"name": "PGDATA", "value": PGDATA}],
        "resources": resources.k8s(),
        "security_context": kx.container_security_context(kx.DB_UID),
        "volume_mounts": mounts,
    }]


# --- the major upgrade Job (pure: its pod's container) ----------------------------------------

MAJOR_UPGRADE = "major-upgrade"  # the Job's component and identity (grants.GRANTS row)
MAJOR_UPGRADE_COMMAND = "tickstack-major-upgrade"  # scripts/pg_major_upgrade.sh in the image
# The primary's pod stops within its termination grace period (then the kubelet kills it).
TERMINATION_GRACE_SECONDS = 120
# Runs as `sh -c SCRIPT major-upgrade <wait seconds> <script options...>`. The StatefulSet was
# scaled to 0 before the Job was created (it depends on it), but its pod may still be stopping:
# wait until its server has removed postmaster.pid, at most the pod's grace period and a
# margin — by then the kubelet has killed it, and a postmaster.pid left is a crashed cluster,
# which the script recovers (starts and stops it cleanly with the old binaries). The bindirs
# are the image's (ENV in infra/images/primary/Dockerfile).
MAJOR_UPGRADE_SCRIPT = (
    'set -eu; limit=$1; shift; waited=0; '
    'while [ -e "$PGDATA/postmaster.pid" ] && [ "$waited" -lt "$limit" ]; do '
    'if [ "$waited" -eq 0 ]; then echo "tickstack major upgrade: waiting for the primary '
    'to stop ($PGDATA/postmaster.pid, at most $limit s)"; fi; '
    'sleep 5; waited=$((waited + 5)); done; '
    f'exec {MAJOR_UPGRADE_COMMAND} --data "$PGDATA" --old-bindir "$PG_PREVIOUS_BINDIR" '
    '--new-bindir "$PG_BINDIR" "$@"'
)


def major_upgrade_args() -> list[str]:
    """What follows the wait: the primary's stanza and pgBackRest configuration."""
    return [str(TERMINATION_GRACE_SECONDS + 60), "--stanza", configs.STANZA,
            "--pgbackrest-config", PGBACKREST_CONF]


def major_upgrade_container(image: str, resources: Resources, mounts: list[dict]) -> dict:
    """The upgrade: the primary's image, data volume and pgBackRest configuration."""
    return {
        "name": MAJOR_UPGRADE,
        "image": image,
        "image_pull_policy": "IfNotPresent",
        "command": ["sh", "-c", MAJOR_UPGRADE_SCRIPT, MAJOR_UPGRADE, *major_upgrade_args()],
        "env": [{"name": "PGDATA", "value": PGDATA}],
        "resources": resources.k8s(),
        "security_context": kx.container_security_context(kx.DB_UID),
        "volume_mounts": mounts,
    }


def pod_annotations(restore: Restore | None, config_hash: pulumi.Input[str]) -> dict:
    """The pod's annotations: its configuration's hash, and a restore's target."""
    out = {"tickstack.io/config-sha256": config_hash}
    if restore is not None:
        out["tickstack.io/restore-target"] = restore.target_iso
    return out


def config_sha256(files: dict[str, str], server_cert: str) -> str:
    """What rolls the pod: a config or certificate change (Postgres reads them at start)."""
    return hashlib.sha256(("\0".join(f"{k}={v}" for k, v in sorted(files.items()))
                           + "\0" + server_cert).encode()).hexdigest()
