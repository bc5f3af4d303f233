"""The workers (Kubernetes): one image, `python -m workers <command>` per workload.

  migrate      Job, first: primary and replica (everything else depends on it); creates the
               databases it migrates when missing (the primary's image creates none of ours)
  stanza       Job, after migrate: pgBackRest's stanza, created and checked where a failure
               fails `pulumi up` (a WAL archive that cannot work is never silent)
  restore      Job, only for a disaster-recovery rebuild: landing replay after the PITR
  ingest       Deployment: the live trade stream (one consumer; Recreate; SIGTERM grace period)
  embed, replicate, retention, backup-full (weekly), backup-diff (daily),
  backup-check (archive health: a failed Job is the alert)   CronJobs

Jobs are replaced (new name) when their pod changes and carry `pulumi.com/replaceUnready`, so
a Job that failed is re-run by the next `up`; Pulumi waits for them as long as their deadline
allows (custom timeouts from the stack config). The image is the stack's ECR repository's, by
digest. Every DSN verifies the server (`sslmode=verify-full`): the primary with the stack's CA
(the `tickstack-ca` ConfigMap), RDS with Amazon's CA bundle, which the worker image carries.

Least privilege: every workload connects as its own login (sql/002_roles.sql groups, logins
`workers migrate` creates from the logins Secret), gets its DSNs from its own Secret mounted as
files (never a ConfigMap, never environment variables), and runs under its own service account
with its own IRSA role granting exactly its row of grants.GRANTS (access.py). Non-secret
settings come from infra/worker_settings.worker_env, as locally.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra import configs, cron, worker_settings
from infra.components import database as db
from infra.components import grants
from infra.components import k8s as kx
from infra.stack_config import JobDeadlines, Resources, Schedules

# The stream worker's HTTP endpoint (TICKSTACK_HEALTH_PORT, the worker's default): /healthz
# (alive), /readyz (connected and writing), /metrics (Prometheus).
HEALTH_PORT = 9108
LOGINS_DIR = "/etc/tickstack/logins"
# The workload's DSN Secret as files (TICKSTACK_PRIMARY_DSN, ...): the workers' Settings read
# them from TICKSTACK_SECRETS_DIR (workers/core/settings.py). Never environment variables.
SECRETS_DIR = "/etc/tickstack/secrets"
ENTRYPOINT = ["python", "-m", "workers"]
CA_DIR = "/etc/tickstack/ca"  # the stack's CA (ConfigMap): the primary's certificate's issuer
PRIMARY_CA = f"{CA_DIR}/ca.crt"
# Amazon RDS's CA bundle, in the worker image (workers/Dockerfile).
RDS_CA_BUNDLE = "/usr/local/share/tickstack/rds-global-bundle.pem"
REPLACE_UNREADY = "pulumi.com/replaceUnready"
RESTORE_TARGET_ANNOTATION = "tickstack.io/restore-target"

# Who a workload connects as: the primary's superuser / the replica's master (migrations and
# the DR rebuild only), or a worker group's login.
Login = Literal["admin", "tickstack_ingest", "tickstack_embed", "tickstack_retention",
                "tickstack_reader", "tickstack_replicate", "tickstack_backup"]


@dataclass(frozen=True)
class Workload:
    args: tuple[str, ...]
    primary: Login
    replica: Login | None = None
    https: bool = False  # S3 landing / STS
    logins_file: bool = False
    backup_client: bool = False  # talks to pgBackRest's TLS server with the client certificate
    secret: str = ""  # which DSN Secret (default: the workload's name)
    extra_env: dict[str, str] = field(default_factory=dict)
    identity: str = ""  # grants.GRANTS row / service account (set by `workloads`)

    @property
    def service_account(self) -> str:
        return grants.service_account(self.identity)


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
    job_deadlines: JobDeadlines
    stream_url: str
    stream_symbol: str
    stream_market: str
    ingest_grace_period_seconds: int
    ingest_resources: Resources
    job_resources: Resources
    ca_config_map: pulumi.Input[str]
    pgbackrest_client_config_map: pulumi.Input[str]
    pgbackrest_client_tls_secret: pulumi.Input[str]
    migrate_timeout_seconds: int = 3600
    restore_timeout_seconds: int = 6 * 3600
    await_margin_seconds: int = 600
    restore_target: str | None = None
    # During the primary's major upgrade: the stream Deployment at 0 replicas and every
    # CronJob suspended (nothing writes to, or backs up, a primary that is down).
    paused: bool = False
    # Resources that must be ready before the migrations run (primary, replica, policies).
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def workloads(a: WorkersArgs) -> dict[str, Workload]:
    # Backups go through pgBackRest's TLS server in the primary's pod (database.py), with
    # the client certificate; the repository (S3) is written from the backup pod (IRSA).
    backup_env = {"TICKSTACK_PGBACKREST_CONFIG": db.CLIENT_CONF}
    migrate_env = {"TICKSTACK_RESTORE_TARGET": a.restore_target} if a.restore_target else {}

    def backup(*args: str) -> Workload:
        return Workload(("backup", *args), "tickstack_backup", https=True,
                        secret="backup", backup_client=True, extra_env=backup_env)

    w = {
        # The restore target is part of the migrate Job's pod: a rebuild replaces the Job, so
        # migrations run again on the restored database.
        "migrate": Workload(("migrate",), "admin", "admin", logins_file=True,
                            extra_env=migrate_env),
        "stanza": backup("--stanza-create"),
        "ingest": Workload(("stream", "--url", a.stream_url, "--symbol", a.stream_symbol,
                            "--market", a.stream_market),
                           "tickstack_ingest", "tickstack_ingest", https=True,
                           extra_env={"TICKSTACK_HEALTH_PORT": str(HEALTH_PORT)}),
        # Reads the primary as ingest does; rebuilds differing buckets on the replica with
        # its own login, which may delete ticks there (sql/015).
        "replicate": Workload(("replicate",), "tickstack_ingest", "tickstack_replicate",
                              https=True),
        "embed": Workload(("embed",), "tickstack_embed"),
        "retention": Workload(("retention",), "tickstack_retention", "tickstack_retention"),
        "backup-full": backup("--type", "full"),
        "backup-diff": backup("--type", "diff"),
        "backup-check": backup("--check"),
    }
    if a.restore_target:
        # The primary was restored to the target by its init container (database.py); this
        # closes the gap after the target from landing.
        w["restore"] = Workload(("restore", "--target-time", a.restore_target, "--skip-pitr"),
                                "admin", https=True)
    # Each workload its own service account and IRSA role (grants.GRANTS: its S3 actions).
    return {k: dataclasses.replace(v, identity=grants.identity_of(k)) for k, v in w.items()}


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
                worker_settings.worker_logins_json)},
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
                                     active_deadline=args.migrate_timeout_seconds)
        after_migrate = pulumi.ResourceOptions(parent=self, depends_on=[self.migrate_job])
        self.stanza_job = self._job("stanza", table["stanza"], after_migrate,
                                    active_deadline=args.migrate_timeout_seconds)
        ready: list[pulumi.Resource] = [self.migrate_job, self.stanza_job]
        self.restore_job = None
        if "restore" in table:
            self.restore_job = self._job("restore", table["restore"], after_migrate,
                                         active_deadline=args.restore_timeout_seconds)
            ready.append(self.restore_job)
        after = pulumi.ResourceOptions(parent=self, depends_on=ready)

        self._deployment("ingest", table["ingest"], after)
        for key in ("embed", "replicate", "retention", "backup-full", "backup-diff",
                    "backup-check"):
            field_name = key.replace("-", "_")
            self._cronjob(key, table[key], getattr(args.schedules, field_name),
                          getattr(args.job_deadlines, field_name), after)
        self.register_outputs({"migrateJob": kx.name_of(self.migrate_job)})

    # --- secrets ---------------------------------------------------------------------------

    def _dsn_secret(self, key: str, wl: Workload,
                    passwords: dict[str, pulumi.Output[str]]) -> pulumi.Output[str]:
        a = self._args

        def dsn_output(server: configs.Server, group: str | None) -> pulumi.Output[str]:
            if server == "primary":
                user = group and configs.WORKER_LOGINS[group] or configs.PRIMARY_ADMIN
                pw = passwords[user] if group else a.primary_password
                host, port, ca = a.primary_host, db.PORT, PRIMARY_CA
            else:
                user = group and configs.WORKER_LOGINS[group] or a.replica_master_user
                pw = passwords[user] if group else a.replica_master_password
                host, port, ca = a.replica_host, a.replica_port, RDS_CA_BUNDLE
            return pulumi.Output.all(pw, host).apply(
                lambda v: worker_settings.postgres_dsn(user=user, password=v[0], host=v[1],
                                                       port=port, sslrootcert=ca))

        # Which setting gets which login: the one function the local environment's settings
        # follow too (worker_settings.workload_dsn_env).
        data = worker_settings.workload_dsn_env(wl.primary, wl.replica, dsn_output)
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
        # Every worker verifies the primary's certificate against the stack's CA.
        volumes = [tmp_vol, {"name": "ca", "config_map": {"name": a.ca_config_map}}]
        mounts = [tmp_mount, {"name": "ca", "mount_path": CA_DIR, "read_only": True}]
        env = {"HOME": "/tmp", "TMPDIR": "/tmp", "TICKSTACK_SECRETS_DIR": SECRETS_DIR,
               **wl.extra_env}
        volumes.append({"name": "secrets", "secret": {
            "secret_name": self._dsn_secrets[wl.secret or key], "default_mode": 0o440}})
        mounts.append({"name": "secrets", "mount_path": SECRETS_DIR, "read_only": True})
        if wl.backup_client:
            volumes += [{"name": "pgbackrest-client", "config_map": {
                            "name": a.pgbackrest_client_config_map}},
                        {"name": "pgbackrest-client-tls", "secret": {
                            "secret_name": a.pgbackrest_client_tls_secret,
                            "default_mode": 0o440}}]
            mounts += [{"name": "pgbackrest-client", "mount_path": db.CLIENT_DIR,
                        "read_only": True},
                       {"name": "pgbackrest-client-tls", "mount_path": db.CLIENT_TLS_DIR,
                        "read_only": True}]
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
            "env": kx.env_list(env) + ([
                # The health endpoint binds loopback unless told: the kubelet probes the pod IP.
                {"name": "TICKSTACK_HEALTH_HOST",
                 "value_from": {"field_ref": {"field_path": "status.podIP"}}}]
                if key == "ingest" else []),
            "env_from": [{"config_map_ref": {"name": self._env_map}}],
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
            # No workload talks to the Kubernetes API (IRSA projects its own token).
            "automount_service_account_token": False,
            "enable_service_links": False,
            "restart_policy": restart_policy,
            "security_context": kx.pod_security_context(kx.WORKER_UID),
            "containers": [container],
            "volumes": volumes,
        }
        meta: dict = {"labels": kx.labels(
            component, db_client=True, replica_client=wl.replica is not None,
            https_egress=wl.https, backup_client=wl.backup_client)}
        # Which workload this is (its row of grants.GRANTS): the policy pack checks that no
        # two workloads share a service account.
        meta["labels"][kx.WORKLOAD] = wl.identity
        if key == "ingest":
            meta["annotations"] = {"prometheus.io/scrape": "true",
                                   "prometheus.io/port": str(HEALTH_PORT),
                                   "prometheus.io/path": "/metrics"}
        if "TICKSTACK_RESTORE_TARGET" in wl.extra_env:
            meta["annotations"] = {RESTORE_TARGET_ANNOTATION:
                                   wl.extra_env["TICKSTACK_RESTORE_TARGET"]}
        return {"metadata": meta, "spec": spec}

    def _job(self, key: str, wl: Workload, opts: pulumi.ResourceOptions, *,
             active_deadline: int) -> k8s.batch.v1.Job:
        a = self._args
        # No fixed name: a new image (or command) replaces the Job with a fresh one, and
        # Pulumi waits for it to complete before anything that depends on it — as long as
        # its deadline allows, not the provider's default 10 minutes. replaceUnready: a Job
        # that failed is replaced (re-run) by the next `up` instead of being left failed.
        wait = f"{active_deadline + a.await_margin_seconds}s"
        return k8s.batch.v1.Job(
            f"{self._name}-{key}",
            metadata={"namespace": a.namespace, "labels": kx.labels(key),
                      "annotations": {REPLACE_UNREADY: "true"}},
            spec={"backoff_limit": 3, "active_deadline_seconds": active_deadline,
                  "template": self._pod(key, wl, a.job_resources, restart_policy="Never")},
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                custom_timeouts=pulumi.CustomTimeouts(create=wait, update=wait))))

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
                "replicas": 0 if a.paused else 1,
                # One stream consumer at a time: never two during a rollout.
                "strategy": {"type": "Recreate"},
                "selector": {"match_labels": kx.selector(key)},
                "template": pod,
            },
            opts=opts)

    def _cronjob(self, key: str, wl: Workload, schedule: str, deadline: int,
                 opts: pulumi.ResourceOptions) -> None:
        a = self._args
        component = key.split("-")[0]
        # The run ends (deadline) before the next is due, also when it started late: a hung
        # run never silences the next (concurrencyPolicy Forbid skips runs while one is on).
        interval = cron.min_interval_seconds(schedule)
        if deadline >= interval:
            raise ValueError(f"CronJob {key}: deadline {deadline} s is not shorter than its "
                             f"schedule's interval ({schedule!r}: {interval} s)")
        starting = max(10, min(600, interval - deadline))
        pod = self._pod(key, wl, a.job_resources, restart_policy="Never", component=component)
        k8s.batch.v1.CronJob(
            f"{self._name}-{key}",
            metadata={"name": f"tickstack-{key}", "namespace": a.namespace,
                      "labels": kx.labels(component)},
            spec={
                "schedule": schedule,
                "suspend": a.paused,
                "time_zone": "Etc/UTC",
                "concurrency_policy": "Forbid",
                "starting_deadline_seconds": starting,
                "successful_jobs_history_limit": 3,
                "failed_jobs_history_limit": 3,
                "job_template": {"spec": {"backoff_limit": 2,
                                          "active_deadline_seconds": deadline,
                                          "template": pod}},
            },
            opts=opts)
