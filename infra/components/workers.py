"""The workers (Kubernetes): one image, `python -m workers <command>` per workload.

  migrate      Job, first: primary and replica (everything else depends on it)
  restore      Job, only for a disaster-recovery rebuild: landing replay after the PITR
  ingest       Deployment: the live trade stream (one consumer; Recreate; SIGTERM grace period)
  embed, replicate, retention, backup-full (weekly), backup-diff (daily)   CronJobs

Least privilege: every workload connects as its own login (sql/002_roles.sql groups, logins
`workers migrate` creates from the logins Secret), gets its DSNs from its own Secret (never a
ConfigMap), and runs under a service account that grants only the AWS/Kubernetes access it
needs (access.py). Non-secret settings come from infra/configs.worker_env, as locally.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import configs
from infra.components import access
from infra.components import k8s as kx
from infra.components.database import CONTAINER as DB_CONTAINER
from infra.components.database import PGBACKREST_CONF
from infra.components.database import POD as DB_POD
from infra.stack_config import Resources, Schedules

# The stream worker's HTTP endpoint (TICKSTACK_HEALTH_PORT, the worker's default): /healthz
# (alive), /readyz (connected and writing), /metrics (Prometheus).
HEALTH_PORT = 9108
LOGINS_DIR = "/etc/tickstack/logins"
ENTRYPOINT = ["python", "-m", "workers"]

# Who a workload connects as: the primary's superuser / the replica's master (migrations and
# the DR rebuild only), or a worker group's login.
Login = Literal["admin", "tickstack_ingest", "tickstack_embed", "tickstack_retention",
                "tickstack_reader"]


@dataclass(frozen=True)
class Workload:
    args: tuple[str, ...]
    service_account: str
    primary: Login
    replica: Login | None = None
    https: bool = False  # S3 landing / STS / API server
    logins_file: bool = False
    secret: str = ""  # which DSN Secret (default: the workload's name)
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkersArgs:
    namespace: pulumi.Input[str]
    image: pulumi.Input[str]
    worker_env: pulumi.Input[dict]
    primary_host: pulumi.Input[str]
    primary_password: pulumi.Input[str]
    replica_host: pulumi.Input[str]
    replica_port: int
    replica_master_user: str
    replica_master_password: pulumi.Input[str]
    schedules: Schedules
    stream_url: str
    stream_symbol: str
    ingest_grace_period_seconds: int
    ingest_resources: Resources
    job_resources: Resources
    restore_target: str | None = None
    # Resources that must be ready before the migrations run (primary, replica, policies).
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def workloads(a: WorkersArgs) -> dict[str, Workload]:
    backup_env = {
        # The backup CronJob runs pgBackRest inside the primary's pod (where the data is).
        "TICKSTACK_PGBACKREST_CONFIG": PGBACKREST_CONF,
        "TICKSTACK_PGBACKREST_EXEC_POD": DB_POD,
        "TICKSTACK_PGBACKREST_EXEC_CONTAINER": DB_CONTAINER,
    }
    w = {
        "migrate": Workload(("migrate",), access.WORKER_SA, "admin", "admin", logins_file=True),
        "ingest": Workload(("stream", "--url", a.stream_url, "--symbol", a.stream_symbol),
                           access.LANDING_SA, "tickstack_ingest", "tickstack_ingest", https=True,
                           extra_env={"TICKSTACK_HEALTH_PORT": str(HEALTH_PORT)}),
        "replicate": Workload(("replicate",), access.LANDING_SA, "tickstack_ingest",
                              "tickstack_ingest", https=True),
        "embed": Workload(("embed",), access.WORKER_SA, "tickstack_embed"),
        "retention": Workload(("retention",), access.WORKER_SA, "tickstack_retention",
                              "tickstack_retention"),
        "backup-full": Workload(("backup", "--type", "full"), access.BACKUP_SA,
                                "tickstack_reader", https=True, secret="backup",
                                extra_env=backup_env),
        "backup-diff": Workload(("backup", "--type", "diff"), access.BACKUP_SA,
                                "tickstack_reader", https=True, secret="backup",
                                extra_env=backup_env),
    }
    if a.restore_target:
        # The primary was restored to the target by its init container (database.py); this
        # closes the gap after the target from landing.
        w["restore"] = Workload(("restore", "--target-time", a.restore_target, "--skip-pitr"),
                                access.LANDING_SA, "admin", https=True)
    return w


class Workers(pulumi.ComponentResource):
    """Needs a Kubernetes provider in `opts.providers`."""

    migrate_job: k8s.batch.v1.Job
    restore_job: k8s.batch.v1.Job | None

    def __init__(self, name: str, args: WorkersArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickstack:workers:Workers", name, None, opts)
        self._name, self._args = name, args
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        table = workloads(args)

        passwords = {
            user: random.RandomPassword(f"{name}-login-{user}", length=32, special=False,
                                        opts=child).result
            for user in configs.WORKER_LOGINS.values()
        }
        logins = k8s.core.v1.Secret(
            f"{name}-logins",
            metadata={"name": "tickstack-worker-logins", "namespace": ns,
                      "labels": kx.labels("migrate")},
            type="Opaque",
            string_data={"logins.json": pulumi.Output.all(**passwords).apply(
                configs.worker_logins_json)},
            opts=child)
        self._logins_secret = kx.name_of(logins)
        env_map = k8s.core.v1.ConfigMap(
            f"{name}-env",
            metadata={"name": "tickstack-worker-env", "namespace": ns,
                      "labels": {"app.kubernetes.io/part-of": kx.PART_OF}},
            data=args.worker_env, opts=child)
        self._env_map = kx.name_of(env_map)

        self._dsn_secrets: dict[str, pulumi.Output[str]] = {}
        for key, wl in table.items():
            secret = wl.secret or key
            if secret not in self._dsn_secrets:
                self._dsn_secrets[secret] = self._dsn_secret(secret, wl, passwords)

        after_db = pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on))
        self.migrate_job = self._job("migrate", table["migrate"], after_db,
                                     active_deadline=3600)
        ready: list[pulumi.Resource] = [self.migrate_job]
        self.restore_job = None
        if "restore" in table:
            self.restore_job = self._job(
                "restore", table["restore"],
                pulumi.ResourceOptions(parent=self, depends_on=[self.migrate_job]),
                active_deadline=6 * 3600)
            ready.append(self.restore_job)
        after = pulumi.ResourceOptions(parent=self, depends_on=ready)

        self._deployment("ingest", table["ingest"], after)
        s = args.schedules
        for key, schedule in (("embed", s.embed), ("replicate", s.replicate),
                              ("retention", s.retention), ("backup-full", s.backup_full),
                              ("backup-diff", s.backup_diff)):
            self._cronjob(key, table[key], schedule, after)
        self.register_outputs({"migrateJob": kx.name_of(self.migrate_job)})

    # --- secrets ---------------------------------------------------------------------------

    def _dsn_secret(self, key: str, wl: Workload,
                    passwords: dict[str, pulumi.Output[str]]) -> pulumi.Output[str]:
        a = self._args

        def primary(login: Login) -> pulumi.Output[str]:
            user = "postgres" if login == "admin" else configs.WORKER_LOGINS[login]
            pw = a.primary_password if login == "admin" else passwords[user]
            return pulumi.Output.all(pw, a.primary_host).apply(
                lambda v: configs.postgres_dsn(user=user, password=v[0], host=v[1],
                                               sslmode="prefer"))

        def replica(login: Login) -> pulumi.Output[str]:
            user = a.replica_master_user if login == "admin" else configs.WORKER_LOGINS[login]
            pw = a.replica_master_password if login == "admin" else passwords[user]
            # rds.force_ssl: TLS is required by the server too.
            return pulumi.Output.all(pw, a.replica_host).apply(
                lambda v: configs.postgres_dsn(user=user, password=v[0], host=v[1],
                                               port=a.replica_port, sslmode="require"))

        data: dict[str, pulumi.Output[str]] = {"TICKSTACK_PRIMARY_DSN": primary(wl.primary)}
        if wl.primary != "admin":
            data[configs.dsn_env_key(wl.primary)] = data["TICKSTACK_PRIMARY_DSN"]
        if wl.replica is not None:
            data["TICKSTACK_REPLICA_DSN"] = replica(wl.replica)
            if wl.replica == "tickstack_retention":
                data["TICKSTACK_REPLICA_RETENTION_DSN"] = data["TICKSTACK_REPLICA_DSN"]
        secret = k8s.core.v1.Secret(
            f"{self._name}-dsn-{key}",
            metadata={"name": f"tickstack-dsn-{key}", "namespace": a.namespace,
                      "labels": {"app.kubernetes.io/part-of": kx.PART_OF}},
            type="Opaque",
            string_data={k: pulumi.Output.secret(v) for k, v in data.items()},
            opts=pulumi.ResourceOptions(parent=self))
        return kx.name_of(secret)

    # --- pods ------------------------------------------------------------------------------

    def _pod(self, key: str, wl: Workload, resources: Resources, *,
             restart_policy: str, component: str | None = None) -> dict:
        a = self._args
        component = component or key
        tmp_vol, tmp_mount = kx.scratch("tmp", "/tmp", "1Gi")
        volumes, mounts = [tmp_vol], [tmp_mount]
        env = {"HOME": "/tmp", "TMPDIR": "/tmp", **wl.extra_env}
        if wl.logins_file:
            volumes.append({"name": "logins", "secret": {
                "secret_name": self._logins_secret, "default_mode": 0o440}})
            mounts.append({"name": "logins", "mount_path": LOGINS_DIR, "read_only": True})
            env["TICKSTACK_WORKER_LOGINS_FILE"] = f"{LOGINS_DIR}/logins.json"
        container: dict = {
            "name": component,
            "image": a.image,
            "image_pull_policy": "IfNotPresent",
            "command": ENTRYPOINT,
            "args": list(wl.args),
            "env": kx.env_list(env),
            "env_from": [{"config_map_ref": {"name": self._env_map}},
                         {"secret_ref": {"name": self._dsn_secrets[wl.secret or key]}}],
            "resources": resources.k8s(),
            "security_context": kx.container_security_context(kx.WORKER_UID),
            "volume_mounts": mounts,
        }
        if key == "ingest":
            container["ports"] = [{"name": "http", "container_port": HEALTH_PORT,
                                   "protocol": "TCP"}]
            container["startup_probe"] = {
                "http_get": {"path": "/healthz", "port": "http"},
                "period_seconds": 2, "failure_threshold": 60}
            container["liveness_probe"] = {
                "http_get": {"path": "/healthz", "port": "http"},
                "period_seconds": 10, "timeout_seconds": 3, "failure_threshold": 3}
            container["readiness_probe"] = {
                "http_get": {"path": "/readyz", "port": "http"},
                "period_seconds": 5, "timeout_seconds": 3, "failure_threshold": 3}
        spec: dict = {
            "service_account_name": wl.service_account,
            # Only the backup account needs an API token (exec into the primary's pod).
            "automount_service_account_token": wl.service_account == access.BACKUP_SA,
            "enable_service_links": False,
            "restart_policy": restart_policy,
            "security_context": kx.pod_security_context(kx.WORKER_UID),
            "containers": [container],
            "volumes": volumes,
        }
        meta: dict = {"labels": kx.labels(
            component, db_client=True, replica_client=wl.replica is not None,
            https_egress=wl.https)}
        if key == "ingest":
            meta["annotations"] = {"prometheus.io/scrape": "true",
                                   "prometheus.io/port": str(HEALTH_PORT),
                                   "prometheus.io/path": "/metrics"}
        return {"metadata": meta, "spec": spec}

    def _job(self, key: str, wl: Workload, opts: pulumi.ResourceOptions, *,
             active_deadline: int) -> k8s.batch.v1.Job:
        a = self._args
        # No fixed name: a new image (or command) replaces the Job with a fresh one, and
        # Pulumi waits for it to complete before anything that depends on it.
        return k8s.batch.v1.Job(
            f"{self._name}-{key}",
            metadata={"namespace": a.namespace, "labels": kx.labels(key)},
            spec={"backoff_limit": 3, "active_deadline_seconds": active_deadline,
                  "template": self._pod(key, wl, a.job_resources, restart_policy="Never")},
            opts=opts)

    def _deployment(self, key: str, wl: Workload, opts: pulumi.ResourceOptions) -> None:
        a = self._args
        pod = self._pod(key, wl, a.ingest_resources, restart_policy="Always")
        # SIGTERM: finish the batch in flight and commit, within this many seconds.
        pod["spec"]["termination_grace_period_seconds"] = a.ingest_grace_period_seconds
        k8s.apps.v1.Deployment(
            f"{self._name}-{key}",
            metadata={"name": f"tickstack-{key}", "namespace": a.namespace,
                      "labels": kx.labels(key)},
            spec={
                "replicas": 1,
                # One stream consumer at a time: never two during a rollout.
                "strategy": {"type": "Recreate"},
                "selector": {"match_labels": kx.selector(key)},
                "template": pod,
            },
            opts=opts)

    def _cronjob(self, key: str, wl: Workload, schedule: str,
                 opts: pulumi.ResourceOptions) -> None:
        a = self._args
        component = key.split("-")[0]
        pod = self._pod(key, wl, a.job_resources, restart_policy="Never", component=component)
        k8s.batch.v1.CronJob(
            f"{self._name}-{key}",
            metadata={"name": f"tickstack-{key}", "namespace": a.namespace,
                      "labels": kx.labels(component)},
            spec={
                "schedule": schedule,
                "time_zone": "Etc/UTC",
                "concurrency_policy": "Forbid",
                "starting_deadline_seconds": 600,
                "successful_jobs_history_limit": 3,
                "failed_jobs_history_limit": 3,
                "job_template": {"spec": {"backoff_limit": 2,
                                          "active_deadline_seconds": 6 * 3600,
                                          "template": pod}},
            },
            opts=opts)
