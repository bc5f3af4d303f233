"""The Pulumi program: one `pulumi up` per stack provisions storage, database, replica, backups
and the workers. dev and prod differ only through config (Pulumi.<stack>.yaml).

Config is read and validated once, before any resource is declared (stack_config.py). The
Kubernetes cluster is an input (cluster.py). Never imports infra.local (the local environment);
both call the one renderer, infra/configs.py.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra import configs, worker_settings
from infra import stack_config as sc
from infra.components import access as acc
from infra.components import grants
from infra.components.access import Access, AccessArgs
from infra.components.cluster import Cluster, ClusterArgs
from infra.components.database import MAJOR_UPGRADE
from infra.components.network import NetworkArgs, NetworkPolicies
from infra.components.primary import Primary, PrimaryArgs
from infra.components.replica import MASTER_USER, Replica, ReplicaArgs
from infra.components.replica import PORT as REPLICA_PORT
from infra.components.storage import Storage, StorageArgs
from infra.components.workers import Workers, WorkersArgs


def build(cfg: sc.StackConfig, region: str,
          kubeconfig: pulumi.Input[str] | None) -> dict[str, pulumi.Output]:
    """Declare every resource of the stack; returns the stack outputs."""
    stack = pulumi.get_stack()
    cluster = Cluster("cluster", ClusterArgs(
        namespace=cfg.namespace, cluster_stack=cfg.cluster_stack, kubeconfig=kubeconfig,
        oidc_provider_arn=cfg.oidc_provider_arn, oidc_provider_url=cfg.oidc_provider_url,
        vpc_id=cfg.vpc_id, vpc_cidr=cfg.vpc_cidr, private_subnet_ids=cfg.private_subnet_ids,
        cluster_security_group_id=cfg.cluster_security_group_id, protect=cfg.protect_data,
    ))
    on_cluster = pulumi.ResourceOptions(providers={"kubernetes": cluster.provider})
    ns = cluster.namespace

    storage = Storage("storage", StorageArgs(
        landing_ia_after_days=cfg.landing_ia_after_days,
        landing_glacier_ir_after_days=cfg.landing_glacier_ir_after_days,
        landing_noncurrent_expire_days=cfg.landing_noncurrent_expire_days,
        backup_noncurrent_expire_days=cfg.backup_noncurrent_expire_days,
        protect=cfg.protect_data,
    ))
    access = Access("access", AccessArgs(
        namespace=ns, oidc_provider_arn=cluster.oidc_provider_arn,
        oidc_issuer=cluster.oidc_issuer, kms_key_arn=storage.kms_key_arn,
        landing_bucket_arn=storage.landing_bucket_arn,
        backup_bucket_arn=storage.backup_bucket_arn,
        identities=grants.identities(restore=cfg.restore is not None,
                                     major_upgrade=cfg.primary_major_upgrade),
    ), opts=on_cluster)
    network = NetworkPolicies("network", NetworkArgs(
        namespace=ns, vpc_cidr=cluster.vpc_cidr, stream_port=cfg.stream_port,
    ), opts=on_cluster)
    primary = primary_database(cfg, region, ns, access, storage, on_cluster)
    replica = replica_database(cfg, stack, cluster, storage)
    image = worker_image(storage, cfg)
    workers(cfg, region, ns, image, storage, primary, replica, network, on_cluster)

    return {
        "landingBucket": storage.landing_bucket,
        "backupBucket": storage.backup_bucket,
        "kmsKeyArn": storage.kms_key_arn,
        "imageRepository": storage.repository_url,
        "workerImage": image,
        "namespace": ns,
        "primaryHost": primary.host,
        "replicaEndpoint": replica.endpoint,
        "replicaAddress": replica.address,
        "dbRoleArn": access.role_arns["db"],
        # identity -> IRSA role ARN, one per workload that touches AWS (grants.GRANTS).
        "roleArns": pulumi.Output.all(**access.role_arns),
        "caCert": primary.ca_cert,
        "restoreTarget": pulumi.Output.from_input(
            cfg.restore.target_iso if cfg.restore else ""),
    }


def primary_database(cfg: sc.StackConfig, region: str, ns: pulumi.Input[str], access: Access,
                     storage: Storage, on_cluster: pulumi.ResourceOptions) -> Primary:
    """The primary: one-pod StatefulSet, its configuration, certificates and backups."""
    return Primary("primary", PrimaryArgs(
        namespace=ns, service_account=access.service_accounts[acc.DB_SA],
        image=cfg.primary_image, storage_size=cfg.primary_storage_size,
        storage_class=cfg.primary_storage_class, resources=cfg.primary_resources,
        tuning=configs.PgTuning(shared_buffers=cfg.primary_shared_buffers,
                                max_connections=cfg.primary_max_connections),
        backup_bucket=storage.backup_bucket, region=region, kms_key_arn=storage.kms_key_arn,
        retention_full=cfg.backup_retention_full, retention_diff=cfg.backup_retention_diff,
        max_unavailable=cfg.primary_max_unavailable,
        startup_seconds=cfg.primary_startup_seconds, restore=cfg.restore,
        pgbackrest_resources=cfg.pgbackrest_resources, protect=cfg.protect_data,
        await_margin_seconds=cfg.await_margin_seconds,
        major_upgrade_service_account=(
            access.service_accounts[grants.service_account(MAJOR_UPGRADE)]
            if cfg.primary_major_upgrade else None),
        major_upgrade_timeout_seconds=cfg.primary_major_upgrade_timeout_seconds,
    ), opts=on_cluster)


def replica_database(cfg: sc.StackConfig, stack: str, cluster: Cluster,
                     storage: Storage) -> Replica:
    """The dual-write replica (RDS), reachable from the cluster's pods."""
    return Replica("replica", ReplicaArgs(
        vpc_id=cluster.vpc_id, subnet_ids=cluster.private_subnet_ids,
        source_security_group_ids=[cluster.cluster_security_group_id,
                                   *cfg.replica_source_security_group_ids],
        kms_key_arn=storage.kms_key_arn, instance_class=cfg.replica_instance_class,
        engine_version=cfg.replica_engine_version,
        allocated_storage_gb=cfg.replica_allocated_storage_gb,
        max_allocated_storage_gb=cfg.replica_max_allocated_storage_gb,
        multi_az=cfg.replica_multi_az, backup_retention_days=cfg.replica_backup_retention_days,
        deletion_protection=cfg.deletion_protection,
        skip_final_snapshot=cfg.replica_skip_final_snapshot, protect=cfg.protect_data,
        final_snapshot_name=f"tickstack-{stack}-replica-final",
        apply_immediately=cfg.replica_apply_immediately,
    ))


def workers(cfg: sc.StackConfig, region: str, ns: pulumi.Input[str], image: pulumi.Output[str],
            storage: Storage, primary: Primary, replica: Replica,
            network: NetworkPolicies, on_cluster: pulumi.ResourceOptions) -> Workers:
    """The workers: migrations Job, ingest Deployment, CronJobs (their env from the one
    renderer)."""
    worker_env = pulumi.Output.all(storage.landing_bucket, storage.backup_bucket).apply(
        lambda b: worker_settings.worker_env(worker_settings.WorkerEnv(
            landing_bucket=b[0], backup_bucket=b[1], aws_region=region,
            log_format=cfg.log_format)))
    return Workers("workers", WorkersArgs(
        namespace=ns, image=image, worker_env=worker_env,
        primary_host=primary.host, primary_password=primary.superuser_password,
        replica_host=replica.address, replica_port=REPLICA_PORT,
        replica_master_user=MASTER_USER, replica_master_password=replica.master_password,
        schedules=cfg.schedules, job_deadlines=cfg.job_deadlines, stream_url=cfg.stream_url,
        stream_symbol=cfg.stream_symbol,
        stream_market=cfg.stream_market,
        ingest_grace_period_seconds=cfg.ingest_grace_period_seconds,
        ingest_resources=cfg.ingest_resources, job_resources=cfg.job_resources,
        ca_config_map=primary.ca_config_map,
        pgbackrest_client_config_map=primary.client_config_map,
        pgbackrest_client_tls_secret=primary.client_tls_secret,
        migrate_timeout_seconds=cfg.migrate_timeout_seconds,
        restore_timeout_seconds=cfg.restore_timeout_seconds,
        await_margin_seconds=cfg.await_margin_seconds,
        restore_target=cfg.restore.target_iso if cfg.restore else None,
        paused=cfg.primary_major_upgrade,
        depends_on=[primary.statefulset, replica.instance, network],
    ), opts=on_cluster)


def worker_image(storage: Storage, cfg: sc.StackConfig) -> pulumi.Output[str]:
    """`<repository>:<git sha>@<digest>`: pods pull the digest, so a tag can never be moved
    under a running stack, and prod runs the very image dev ran (CI gives prod dev's digest).
    Without a configured digest, ECR's for the tag (the image must be pushed before `up`)."""
    if cfg.worker_image_digest:
        digest: pulumi.Output[str] = pulumi.Output.from_input(cfg.worker_image_digest)
    else:
        digest = aws.ecr.get_image_output(repository_name=storage.repository_name,
                                          image_tag=cfg.worker_image_tag).image_digest
    return pulumi.Output.concat(storage.repository_url, ":", cfg.worker_image_tag, "@", digest)


def main() -> dict[str, pulumi.Output]:
    """Entry point: validate config (fails before any resource), declare, export."""
    cfg, region = sc.load()
    outputs = build(cfg, region, sc.kubeconfig())
    for k, v in outputs.items():
        pulumi.export(k, v)
    return outputs
