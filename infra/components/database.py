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
`pods/exec`, no backup streamed through the API server (docs/backups.md).

Data protection (`protectData`): the StatefulSet is protected and retained on delete, its
volume claim template is never changed in place (`ignoreChanges`: a change would replace the
StatefulSet), the volume's StorageClass keeps volumes (`reclaimPolicy: Retain`) and allows
expansion, and a size change grows the existing claim (a PVC patch).

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
import pulumi_tls as tls

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
# Server certificate validity; `pulumi up` re-issues it within the renewal window (every
# deploy runs `up`), and the pod rolls (the certificate's hash is a pod annotation).
CERT_VALIDITY_HOURS = 365 * 24
CERT_RENEW_HOURS = 60 * 24
CA_VALIDITY_HOURS = 10 * 365 * 24


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
    pgbackrest_resources: Resources
    protect: bool
    restore: Restore | None = None
    # Pulumi waits this long beyond the start-up budget for the StatefulSet to be ready.
    await_margin_seconds: int = 600


class Primary(pulumi.ComponentResource):
    """Needs a Kubernetes provider in `opts.providers`."""

    host: pulumi.Output[str]
    superuser_password: pulumi.Output[str]
    statefulset: k8s.apps.v1.StatefulSet
    files: pulumi.Output[dict]
    ca_config_map: pulumi.Output[str]  # ConfigMap with ca.crt: what workers verify with
    client_config_map: pulumi.Output[str]  # ConfigMap with the backup workers' pgbackrest.conf
    client_tls_secret: pulumi.Output[str]  # Secret with their client certificate
    ca_cert: pulumi.Output[str]

    def __init__(self, name: str, args: PrimaryArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickstack:database:Primary", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # The data and what holds it: protected (`pulumi destroy` refuses) and kept in the
        # cluster if Pulumi ever deletes them (retainOnDelete).
        keep = pulumi.ResourceOptions(parent=self, protect=args.protect, retain_on_delete=True)
        ns = args.namespace
        lbl = kx.labels("database", name=NAME)
        sel = kx.selector("database", name=NAME)

        password = random.RandomPassword(f"{name}-superuser-password", length=32,
                                         special=False, opts=child)
        self.superuser_password = password.result
        secret = k8s.core.v1.Secret(
            f"{name}-superuser",
            metadata={"name": f"{NAME}-superuser", "namespace": ns, "labels": lbl},
            type="Opaque", string_data={SUPERUSER_PASSWORD_KEY: password.result}, opts=child)

        tls_objects = self._tls(name, args, lbl, child)

        self.files = pulumi.Output.all(args.backup_bucket, args.kms_key_arn, ns).apply(
            lambda a: render_primary_files(
                BackupTarget(bucket=a[0], region=args.region, kms_key_arn=a[1],
                             retention_full=args.retention_full,
                             retention_diff=args.retention_diff),
                args.tuning, a[2]))
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
        client_conf = k8s.core.v1.ConfigMap(
            f"{name}-pgbackrest-client-config",
            metadata={"name": "tickstack-pgbackrest-client", "namespace": ns,
                      "labels": {"app.kubernetes.io/part-of": kx.PART_OF}},
            data=self.files.apply(lambda f: {"pgbackrest.conf": f["pgbackrest-client.conf"]}),
            opts=child)
        self.client_config_map = kx.name_of(client_conf)
        # A config or certificate change rolls the pod (Postgres reads them at start).
        config_hash = pulumi.Output.all(self.files, tls_objects["server_cert"]).apply(
            lambda a: hashlib.sha256(("\0".join(f"{k}={v}" for k, v in sorted(a[0].items()))
                                      + "\0" + a[1]).encode()).hexdigest())

        ports = [{"name": "postgres", "port": PORT, "target_port": "postgres"},
                 {"name": "pgbackrest", "port": PGBACKREST_PORT, "target_port": "pgbackrest"}]
        headless = k8s.core.v1.Service(
            f"{name}-headless",
            metadata={"name": f"{NAME}-headless", "namespace": ns, "labels": lbl},
            spec={"cluster_ip": "None", "selector": sel, "publish_not_ready_addresses": True,
                  "ports": ports},
            opts=child)
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": NAME, "namespace": ns, "labels": lbl},
            spec={"type": "ClusterIP", "selector": sel, "ports": ports},
            opts=child)
        self.host = pulumi.Output.concat(kx.name_of(service), ".", ns, ".svc.cluster.local")

        volumes, mounts = self._volumes()
        # Only the postgres container reads the password (initdb on an empty volume).
        pg_mounts = [*mounts, {"name": "superuser", "mount_path": SUPERUSER_DIR,
                               "read_only": True}]
        security = kx.container_security_context(kx.DB_UID)
        env = [
            {"name": "PGDATA", "value": PGDATA},
            {"name": "PGBACKREST_CONFIG", "value": PGBACKREST_CONF},
            # A file, never an environment variable (inherited by every child process).
            {"name": "POSTGRES_PASSWORD_FILE",
             "value": f"{SUPERUSER_DIR}/{SUPERUSER_PASSWORD_KEY}"},
        ]
        pg_isready = ["pg_isready", "-q", "-h", SOCKET_DIR, "-p", str(PORT), "-U", SUPERUSER]
        container = {
            "name": CONTAINER,
            "image": args.image,
            "image_pull_policy": "IfNotPresent",
            "args": ["postgres", *configs.postgres_start_options(PG_CONFIG_DIR)],
            "env": env,
            "ports": [{"name": "postgres", "container_port": PORT, "protocol": "TCP"}],
            "resources": args.resources.k8s(),
            "security_context": security,
            "volume_mounts": pg_mounts,
            "startup_probe": {"exec": {"command": pg_isready}, "period_seconds": 10,
                              "timeout_seconds": 5,
                              "failure_threshold": max(6, args.startup_seconds // 10)},
            "readiness_probe": {"exec": {"command": pg_isready}, "period_seconds": 10,
                                "timeout_seconds": 5, "failure_threshold": 3},
            "liveness_probe": {"exec": {"command": pg_isready}, "period_seconds": 20,
                               "timeout_seconds": 5, "failure_threshold": 6},
        }
        # pgBackRest's TLS server: backups are taken through it (no pods/exec), with their own
        # CPU and memory, never inside the database container's limits.
        sidecar = {
            "name": SIDECAR,
            "image": args.image,
            "image_pull_policy": "IfNotPresent",
            "command": ["pgbackrest", f"--config={PGBACKREST_CONF}", "server"],
            "env": [{"name": "PGDATA", "value": PGDATA}],
            "ports": [{"name": "pgbackrest", "container_port": PGBACKREST_PORT,
                       "protocol": "TCP"}],
            "resources": args.pgbackrest_resources.k8s(),
            "security_context": security,
            "volume_mounts": mounts,
            "readiness_probe": {"tcp_socket": {"port": "pgbackrest"}, "period_seconds": 10},
            "liveness_probe": {"tcp_socket": {"port": "pgbackrest"}, "period_seconds": 20,
                               "failure_threshold": 6},
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
        storage_class = args.storage_class or self._storage_class(name, args, keep)
        pvc_spec: dict = {"access_modes": ["ReadWriteOnce"], "storage_class_name": storage_class,
                          "resources": {"requests": {"storage": args.storage_size}}}
        wait = f"{args.startup_seconds + args.await_margin_seconds}s"
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
                        "containers": [container, sidecar],
                        "volumes": [*volumes,
                                    {"name": "postgres-config",
                                     "config_map": {"name": kx.name_of(pg_conf)}},
                                    {"name": "pgbackrest-config",
                                     "config_map": {"name": kx.name_of(br_conf)}},
                                    {"name": "tls", "secret": {
                                        "secret_name": tls_objects["server_secret"],
                                        "default_mode": 0o440}},
                                    {"name": "superuser", "secret": {
                                        "secret_name": kx.name_of(secret),
                                        "default_mode": 0o440}}],
                    },
                },
                "volume_claim_templates": [{"metadata": {"name": "data", "labels": lbl},
                                            "spec": pvc_spec}],
            },
            # volumeClaimTemplates cannot change in place: a change would replace the
            # StatefulSet. Growth goes through the claim below; anything else is an
            # operator's job (docs/pulumi.md). Pulumi waits as long as start-up may take.
            opts=pulumi.ResourceOptions.merge(keep, pulumi.ResourceOptions(
                ignore_changes=["spec.volumeClaimTemplates"],
                custom_timeouts=pulumi.CustomTimeouts(create=wait, update=wait))))
        # A bigger primaryStorageSize grows the existing volume (the StorageClass allows
        # expansion), as CloudNativePG resizes its PVCs; shrinking is refused by Kubernetes.
        k8s.core.v1.PersistentVolumeClaimPatch(
            f"{name}-data-size",
            metadata={"name": PVC, "namespace": ns,
                      "annotations": {"pulumi.com/patchForce": "true"}},
            spec={"resources": {"requests": {"storage": args.storage_size}}},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.statefulset],
                                        retain_on_delete=True))
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": NAME, "namespace": ns, "labels": lbl},
            spec={"max_unavailable": args.max_unavailable, "selector": {"match_labels": sel}},
            opts=child)
        self.register_outputs({"host": self.host, "pod": POD, "caCert": self.ca_cert})

    def _storage_class(self, name: str, args: PrimaryArgs,
                       keep: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """The primary's StorageClass: EBS gp3, encrypted, volumes kept when their claim goes
        (Retain) and growable in place; bound where the pod is scheduled."""
        sc = k8s.storage.v1.StorageClass(
            f"{name}-storage-class",
            metadata={"name": pulumi.Output.concat(args.namespace, "-primary-data"),
                      "labels": {"app.kubernetes.io/part-of": kx.PART_OF}},
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true", "csi.storage.k8s.io/fstype": "ext4"},
            reclaim_policy="Retain",
            allow_volume_expansion=True,
            volume_binding_mode="WaitForFirstConsumer",
            opts=keep)
        return kx.name_of(sc)

    def _tls(self, name: str, args: PrimaryArgs, lbl: dict,
             child: pulumi.ResourceOptions) -> dict:
        """The stack's CA, the server's certificate and the backup workers' client
        certificate; Secrets for the keys, a ConfigMap for the CA."""
        ns = args.namespace
        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256",
                                opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca", private_key_pem=ca_key.private_key_pem, is_ca_certificate=True,
            subject={"common_name": "tickstack primary CA", "organization": "tickstack"},
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"], opts=child)
        self.ca_cert = ca.cert_pem

        def leaf(key: str, cn: str, uses: list[str], dns_names=None) -> tuple:
            k = tls.PrivateKey(f"{name}-{key}-key", algorithm="ECDSA", ecdsa_curve="P256",
                               opts=child)
            req = tls.CertRequest(f"{name}-{key}-csr", private_key_pem=k.private_key_pem,
                                  subject={"common_name": cn, "organization": "tickstack"},
                                  dns_names=dns_names, opts=child)
            cert = tls.LocallySignedCert(
                f"{name}-{key}-cert", cert_request_pem=req.cert_request_pem,
                ca_private_key_pem=ca_key.private_key_pem, ca_cert_pem=ca.cert_pem,
                validity_period_hours=CERT_VALIDITY_HOURS, early_renewal_hours=CERT_RENEW_HOURS,
                allowed_uses=["digital_signature", "key_encipherment", *uses], opts=child)
            return k, cert

        server_key, server_cert = leaf(
            "server", NAME, ["server_auth"],
            dns_names=pulumi.Output.from_input(ns).apply(server_dns_names))
        client_key, client_cert = leaf("pgbackrest-client", configs.PGBACKREST_CLIENT_CN,
                                       ["client_auth"])

        def tls_secret(key: str, meta_name: str, k, cert, labels: dict):
            return k8s.core.v1.Secret(
                f"{name}-{key}", metadata={"name": meta_name, "namespace": ns,
                                           "labels": labels},
                type="kubernetes.io/tls",
                string_data={"tls.crt": cert.cert_pem,
                             "tls.key": pulumi.Output.secret(k.private_key_pem),
                             "ca.crt": ca.cert_pem}, opts=child)

        server = tls_secret("tls", f"{NAME}-tls", server_key, server_cert, lbl)
        client = tls_secret("pgbackrest-client-tls", "tickstack-pgbackrest-client-tls",
                            client_key, client_cert, {"app.kubernetes.io/part-of": kx.PART_OF})
        self.client_tls_secret = kx.name_of(client)
        ca_map = k8s.core.v1.ConfigMap(
            f"{name}-ca", metadata={"name": "tickstack-ca", "namespace": ns,
                                    "labels": {"app.kubernetes.io/part-of": kx.PART_OF}},
            data={"ca.crt": ca.cert_pem}, opts=child)
        self.ca_config_map = kx.name_of(ca_map)
        return {"server_secret": kx.name_of(server), "server_cert": server_cert.cert_pem}

    @staticmethod
    def _volumes() -> tuple[list[dict], list[dict]]:
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
