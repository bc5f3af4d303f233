"""The Primary component: the Pulumi resources of the primary database (database.py says
what it is and holds the pod's pure parts; primary_tls.py its certificates).

Needs a Kubernetes provider; every resource is the component's child, named after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import configs
from infra.components import k8s as kx
from infra.components import primary_tls
from infra.components.database import (
    MAJOR_UPGRADE,
    NAME,
    PGBACKREST_PORT,
    POD,
    PORT,
    PVC,
    SUPERUSER_PASSWORD_KEY,
    TERMINATION_GRACE_SECONDS,
    BackupTarget,
    config_sha256,
    init_containers,
    major_upgrade_container,
    pgbackrest_sidecar,
    pod_annotations,
    postgres_container,
    render_primary_files,
    server_dns_names,
    volumes_and_mounts,
)
from infra.stack_config import Resources, Restore


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
    # The in-place major upgrade (docs/upgrading.md): the StatefulSet at 0 replicas and the
    # upgrade Job on its volume, under this service account; its deadline.
    major_upgrade_service_account: pulumi.Input[str] | None = None
    major_upgrade_timeout_seconds: int = 6 * 3600


class Primary(pulumi.ComponentResource):
    """Needs a Kubernetes provider in `opts.providers`."""

    host: pulumi.Output[str]
    superuser_password: pulumi.Output[str]
    statefulset: k8s.apps.v1.StatefulSet
    major_upgrade_job: k8s.batch.v1.Job | None
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

        superuser = self._superuser(name, ns, lbl, child)
        certs = primary_tls.issue(
            name, ns, server_cn=NAME, server_secret_name=f"{NAME}-tls", labels=lbl,
            server_dns_names=pulumi.Output.from_input(ns).apply(server_dns_names), child=child)
        self.ca_cert = certs.ca_cert
        self.client_tls_secret = certs.client_tls_secret
        self.ca_config_map = certs.ca_config_map

        self.files = pulumi.Output.all(args.backup_bucket, args.kms_key_arn, ns).apply(
            lambda a: render_primary_files(
                BackupTarget(bucket=a[0], region=args.region, kms_key_arn=a[1],
                             retention_full=args.retention_full,
                             retention_diff=args.retention_diff),
                args.tuning, a[2]))
        pg_conf, br_conf = self._config_maps(name, ns, lbl, child)
        config_hash = pulumi.Output.all(self.files, certs.server_cert).apply(
            lambda a: config_sha256(a[0], a[1]))
        headless = self._services(name, ns, lbl, child)

        volumes, mounts = volumes_and_mounts()
        pod_volumes = [*volumes,
                       {"name": "postgres-config", "config_map": {"name": pg_conf}},
                       {"name": "pgbackrest-config", "config_map": {"name": br_conf}},
                       {"name": "tls", "secret": {"secret_name": certs.server_secret,
                                                  "default_mode": 0o440}},
                       {"name": "superuser", "secret": {"secret_name": superuser,
                                                        "default_mode": 0o440}}]
        pod = {
            "metadata": {"labels": lbl,
                         "annotations": pod_annotations(args.restore, config_hash)},
            "spec": {
                "service_account_name": args.service_account,
                "automount_service_account_token": False,
                "enable_service_links": False,
                "security_context": kx.pod_security_context(kx.DB_UID),
                # Fast shutdown and the last WAL segment archived.
                "termination_grace_period_seconds": TERMINATION_GRACE_SECONDS,
                "init_containers": init_containers(args.image, args.resources, args.restore,
                                                   mounts),
                "containers": [
                    postgres_container(args.image, args.resources, args.startup_seconds, mounts),
                    pgbackrest_sidecar(args.image, args.pgbackrest_resources, mounts)],
                "volumes": pod_volumes,
            },
        }
        storage_class = args.storage_class or self._storage_class(name, args, keep)
        self.statefulset = self._statefulset(name, args, keep, headless, pod, storage_class)
        self._growth_and_disruption(name, args, lbl, child)
        self.major_upgrade_job = None
        if args.major_upgrade_service_account is not None:
            self.major_upgrade_job = self._major_upgrade_job(name, args, pod_volumes, mounts)
        self.register_outputs({"host": self.host, "pod": POD, "caCert": self.ca_cert})

    def _superuser(self, name: str, ns: pulumi.Input[str], lbl: dict,
                   child: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """The generated superuser password and the Secret holding it (its name returned)."""
        password = random.RandomPassword(f"{name}-superuser-password", length=32,
                                         special=False, opts=child)
        self.superuser_password = password.result
        secret = k8s.core.v1.Secret(
            f"{name}-superuser",
            metadata={"name": f"{NAME}-superuser", "namespace": ns, "labels": lbl},
            type="Opaque", string_data={SUPERUSER_PASSWORD_KEY: password.result}, opts=child)
        return kx.name_of(secret)

    def _config_maps(self, name: str, ns: pulumi.Input[str], lbl: dict,
                     child: pulumi.ResourceOptions) -> tuple[pulumi.Output, pulumi.Output]:
        """The rendered files as ConfigMaps: the server's, pgBackRest's and the backup
        workers'; returns the names of the first two (the pod mounts them)."""
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
        return kx.name_of(pg_conf), kx.name_of(br_conf)

    def _services(self, name: str, ns: pulumi.Input[str], lbl: dict,
                  child: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """The headless Service (its name returned: the StatefulSet's) and the ClusterIP one
        workers connect to (`self.host`)."""
        sel = kx.selector("database", name=NAME)
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
        return kx.name_of(headless)

    def _statefulset(self, name: str, args: PrimaryArgs, keep: pulumi.ResourceOptions,
                     headless: pulumi.Output[str], pod: dict,
                     storage_class: pulumi.Input[str]) -> k8s.apps.v1.StatefulSet:
        lbl = kx.labels("database", name=NAME)
        pvc_spec: dict = {"access_modes": ["ReadWriteOnce"], "storage_class_name": storage_class,
                          "resources": {"requests": {"storage": args.storage_size}}}
        wait = f"{args.startup_seconds + args.await_margin_seconds}s"
        return k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata={"name": NAME, "namespace": args.namespace, "labels": lbl},
            spec={
                "service_name": headless,
                # 0 while the major upgrade Job has the volume (it runs after this is applied).
                "replicas": 0 if args.major_upgrade_service_account is not None else 1,
                "selector": {"match_labels": kx.selector("database", name=NAME)},
                "pod_management_policy": "OrderedReady",
                "update_strategy": {"type": "RollingUpdate"},
                # The data outlives the StatefulSet: deleting or scaling keeps the volume.
                "persistent_volume_claim_retention_policy": {"when_deleted": "Retain",
                                                             "when_scaled": "Retain"},
                "template": pod,
                "volume_claim_templates": [{"metadata": {"name": "data", "labels": lbl},
                                            "spec": pvc_spec}],
            },
            # volumeClaimTemplates cannot change in place: a change would replace the
            # StatefulSet. Growth goes through the claim below; anything else is an
            # operator's job (docs/pulumi.md). Pulumi waits as long as start-up may take.
            opts=pulumi.ResourceOptions.merge(keep, pulumi.ResourceOptions(
                ignore_changes=["spec.volumeClaimTemplates"],
                custom_timeouts=pulumi.CustomTimeouts(create=wait, update=wait))))

    def _major_upgrade_job(self, name: str, args: PrimaryArgs, pod_volumes: list[dict],
                           mounts: list[dict]) -> k8s.batch.v1.Job:
        """The in-place major upgrade of the primary's data directory, in the primary's image
        on its volume (the claim the StatefulSet made), with its pgBackRest configuration. It
        depends on the StatefulSet, so it is created only once the scale to 0 is applied; it
        waits for the old pod's server to be gone (database.MAJOR_UPGRADE_SCRIPT). Replaced,
        so re-run, by the next `up` when it failed; the script completes what a stopped run
        left. Pulumi waits for it as long as its deadline allows."""
        volumes = [v for v in pod_volumes if v["name"] != "superuser"]
        volumes.append({"name": "data", "persistent_volume_claim": {"claim_name": PVC}})
        lbl = kx.labels(MAJOR_UPGRADE, name=NAME, https_egress=True)  # S3 and STS on 443
        lbl[kx.WORKLOAD] = MAJOR_UPGRADE
        wait = f"{args.major_upgrade_timeout_seconds + args.await_margin_seconds}s"
        return k8s.batch.v1.Job(
            f"{name}-{MAJOR_UPGRADE}",
            metadata={"namespace": args.namespace, "labels": lbl,
                      "annotations": {"pulumi.com/replaceUnready": "true"}},
            spec={"backoff_limit": 2,
                  "active_deadline_seconds": args.major_upgrade_timeout_seconds,
                  "template": {"metadata": {"labels": lbl}, "spec": {
                      "service_account_name": args.major_upgrade_service_account,
                      "automount_service_account_token": False,
                      "enable_service_links": False,
                      "restart_policy": "Never",
                      "security_context": kx.pod_security_context(kx.DB_UID),
                      # SIGTERM (the deadline, a deletion): the script cleans up, exit 130.
                      "termination_grace_period_seconds": TERMINATION_GRACE_SECONDS,
                      "containers": [major_upgrade_container(args.image, args.resources,
                                                             mounts)],
                      "volumes": volumes}}},
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.statefulset],
                custom_timeouts=pulumi.CustomTimeouts(create=wait, update=wait)))

    def _growth_and_disruption(self, name: str, args: PrimaryArgs, lbl: dict,
                               child: pulumi.ResourceOptions) -> None:
        """A bigger primaryStorageSize grows the existing volume (the StorageClass allows
        expansion), as CloudNativePG resizes its PVCs; shrinking is refused by Kubernetes.
        And a PodDisruptionBudget."""
        k8s.core.v1.PersistentVolumeClaimPatch(
            f"{name}-data-size",
            metadata={"name": PVC, "namespace": args.namespace,
                      "annotations": {"pulumi.com/patchForce": "true"}},
            spec={"resources": {"requests": {"storage": args.storage_size}}},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.statefulset],
                                        retain_on_delete=True))
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": NAME, "namespace": args.namespace, "labels": lbl},
            spec={"max_unavailable": args.max_unavailable,
                  "selector": {"match_labels": kx.selector("database", name=NAME)}},
            opts=child)

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
