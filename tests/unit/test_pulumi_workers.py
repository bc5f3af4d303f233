"""Workers: one image, a command per workload, migrations first, least privilege everywhere."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from infra import configs, worker_settings
from infra.components import database, replica, workers
from infra.offline.graph import unwrap
from tests.unit.pulumi_stacks import (
    STACKS,
    config,
    config_map_data,
    depends_on,
    env_of,
    graph,
    passwords,
    pod_spec,
    stack_value,
)

JOB = "kubernetes:batch/v1:Job"
CRON = "kubernetes:batch/v1:CronJob"
DEPLOY = "kubernetes:apps/v1:Deployment"
SECRET = "kubernetes:core/v1:Secret"

# resource name -> (type, args after `python -m workers`, service account, primary login)
WORKLOADS = {
    "workers-migrate": (JOB, ["migrate"], "tickstack-migrate", "postgres"),
    "workers-ingest": (DEPLOY, ["stream", "--url", None, "--symbol", "BTCUSDT", "--market",
                                 "spot"],
                       "tickstack-ingest", "ingest_worker"),
    "workers-replicate": (CRON, ["replicate"], "tickstack-replicate", "ingest_worker"),
    "workers-embed": (CRON, ["embed"], "tickstack-embed", "embed_worker"),
    "workers-retention": (CRON, ["retention"], "tickstack-retention", "retention_worker"),
    "workers-stanza": (JOB, ["backup", "--stanza-create"], "tickstack-stanza", "backup_worker"),
    "workers-backup-full": (CRON, ["backup", "--type", "full"], "tickstack-backup",
                            "backup_worker"),
    "workers-backup-diff": (CRON, ["backup", "--type", "diff"], "tickstack-backup",
                            "backup_worker"),
    "workers-backup-check": (CRON, ["backup", "--check"], "tickstack-backup-check",
                             "backup_worker"),
}
# The login each workload uses on the replica (None: it does not connect there).
REPLICA_LOGINS = {"workers-migrate": replica.MASTER_USER, "workers-ingest": "ingest_worker",
                  "workers-replicate": "replicate_worker",
                  "workers-retention": "retention_worker"}
SCHEDULES = {"workers-embed": "embed", "workers-replicate": "replicate",
             "workers-retention": "retention", "workers-backup-full": "backupFull",
             "workers-backup-diff": "backupDiff", "workers-backup-check": "backupCheck"}


def container(g, name: str) -> tuple[dict, dict]:
    type_, *_ = WORKLOADS[name]
    pod = pod_spec(g.get(type_, name))
    [c] = pod["spec"]["containers"]
    return pod, c


def dsn_data(g, pod: dict, c: dict) -> dict[str, str]:
    """The DSN Secret mounted (read-only, not world-readable) where the worker's Settings read
    secret files (TICKSTACK_SECRETS_DIR); never in the environment."""
    assert not [e for e in c.get("envFrom", []) if "secretRef" in e]
    assert env_of(c)["TICKSTACK_SECRETS_DIR"] == workers.SECRETS_DIR
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == workers.SECRETS_DIR]
    assert mount["readOnly"] is True
    [vol] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert vol["secret"]["defaultMode"] in (0o400, 0o440)
    ref = vol["secret"]["secretName"]
    [secret] = [s for s in g.of_type(SECRET) if s.plain["metadata"]["name"] == ref]
    assert secret.secret_paths() == ["stringData"]
    return unwrap(secret.inputs)["stringData"]


@pytest.mark.parametrize("stack", STACKS)
def test_every_workload_runs_its_command_from_the_one_image(stack):
    g = graph(stack)
    image = g.outputs["workerImage"]
    assert image.startswith(f"{g.outputs['imageRepository']}:"
                            f"{stack_value(stack, 'workerImageTag')}@sha256:")
    for name, (_, args, _, _) in WORKLOADS.items():
        _, c = container(g, name)
        assert c["image"] == image, name
        assert c["command"] == ["python", "-m", "workers"], name
        want = [stack_value(stack, "streamUrl") if a is None else a for a in args]
        assert c["args"] == want, name
    kinds = {(r.type, r.name) for t in (JOB, CRON, DEPLOY) for r in g.of_type(t)}
    assert kinds == {(t, n) for n, (t, *_) in WORKLOADS.items()}


@pytest.mark.parametrize("stack", STACKS)
def test_migrations_run_first_after_the_databases(stack):
    g = graph(stack)
    migrate = g.get(JOB, "workers-migrate")
    deps = depends_on(g, migrate)
    assert "kubernetes:apps/v1:StatefulSet::primary-statefulset" in deps
    assert "aws:rds/instance:Instance::replica-db" in deps
    # A dependency on a component is one on all its children: every policy exists first.
    policies = {f"{r.type}::{r.name}" for r in g.of_type(
        "kubernetes:networking.k8s.io/v1:NetworkPolicy")}
    assert policies and policies <= deps
    for name, (type_, *_) in WORKLOADS.items():
        if name != "workers-migrate":
            assert f"{JOB}::workers-migrate" in depends_on(g, g.get(type_, name)), name
        if type_ != JOB:  # the workers start once the stanza is known to work
            assert f"{JOB}::workers-stanza" in depends_on(g, g.get(type_, name)), name
    # A Job that is replaced by a new image must get a new name: no fixed metadata.name.
    assert "name" not in migrate.plain["metadata"]
    assert migrate.plain["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("stack", STACKS)
def test_cronjob_schedules_come_from_config(stack):
    g = graph(stack)
    schedules = stack_value(stack, "schedules")
    for name, key in SCHEDULES.items():
        spec = g.get(CRON, name).plain["spec"]
        assert spec["schedule"] == schedules[key], name
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["timeZone"] == "Etc/UTC"
    full = g.get(CRON, "workers-backup-full").plain["spec"]["schedule"]
    diff = g.get(CRON, "workers-backup-diff").plain["spec"]["schedule"]
    assert full.split()[4] == "0" and diff.split()[4] == "1-6"  # weekly full, daily diff


@pytest.mark.parametrize("stack", STACKS)
def test_stream_ingest_probes_its_health_endpoint_and_drains_on_sigterm(stack):
    g = graph(stack)
    dep = g.get(DEPLOY, "workers-ingest").plain
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}  # never two stream consumers
    pod, c = container(g, "workers-ingest")
    assert pod["spec"]["terminationGracePeriodSeconds"] == stack_value(
        stack, "ingestGracePeriodSeconds")
    assert env_of(c)["TICKSTACK_HEALTH_PORT"] == str(workers.HEALTH_PORT) == "9108"
    assert c["ports"] == [{"name": "http", "containerPort": 9108, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert c["resources"]["requests"]["memory"] == stack_value(stack, "ingestResources")["memory"]


@pytest.mark.parametrize("stack", STACKS)
def test_each_workload_connects_as_its_own_least_privileged_login(stack):
    g = graph(stack)
    host = g.outputs["primaryHost"]
    for name, (_, _, _, login) in WORKLOADS.items():
        pod, c = container(g, name)
        data = dsn_data(g, pod, c)
        dsn = urlparse(data["TICKSTACK_PRIMARY_DSN"])
        assert (dsn.username, dsn.hostname) == (login, host), name
        if login != "postgres":
            group = {u: gr for gr, u in configs.WORKER_LOGINS.items()}[login]
            assert data[configs.dsn_env_key(group)] == data["TICKSTACK_PRIMARY_DSN"]
        replica_dsn = data.get("TICKSTACK_REPLICA_DSN")
        assert (urlparse(replica_dsn).username if replica_dsn else None) == \
            REPLICA_LOGINS.get(name), name
        for v in data.values():  # every DSN verifies the server
            q = parse_qs(urlparse(v).query)
            assert q["sslmode"] == ["verify-full"] and q["sslrootcert"], name
    # Only the migrations get the logins file (they create the logins).
    for name in WORKLOADS:
        pod, c = container(g, name)
        has = "TICKSTACK_WORKER_LOGINS_FILE" in env_of(c)
        assert has is (name == "workers-migrate"), name
    logins = g.get(SECRET, "workers-logins")
    assert logins.secret_paths() == ["stringData"]
    assert set(unwrap(logins.inputs)["stringData"]) == {"logins.json"}


@pytest.mark.parametrize("stack", STACKS)
def test_service_accounts_and_api_tokens(stack):
    g = graph(stack)
    for name, (_, _, sa, _) in WORKLOADS.items():
        pod, _ = container(g, name)
        assert pod["spec"]["serviceAccountName"] == sa, name
        # Nothing talks to the Kubernetes API (backups go through pgBackRest's TLS server).
        assert pod["spec"]["automountServiceAccountToken"] is False, name


@pytest.mark.parametrize("stack", STACKS)
def test_secrets_never_reach_configmaps_or_plain_env(stack):
    g = graph(stack)
    env = config_map_data(g, "workers-env")
    assert env == worker_settings.worker_env(worker_settings.WorkerEnv(
        landing_bucket=g.outputs["landingBucket"], backup_bucket=g.outputs["backupBucket"],
        aws_region="eu-west-1", log_format="json"))
    assert not any("DSN" in k or "PASSWORD" in k for k in env)
    pws = passwords(g)
    assert len(pws) == 2 + len(configs.WORKER_LOGINS)  # superuser, replica master, logins
    plain_texts = [str(r.plain) for r in g.resources
                   if r.type not in (SECRET, "aws:rds/instance:Instance",
                                     "random:index/randomPassword:RandomPassword")]
    for pw in pws:
        assert not any(pw in t for t in plain_texts)


@pytest.mark.parametrize("stack", STACKS)
def test_job_resources_and_deadlines(stack):
    g = graph(stack)
    want = stack_value(stack, "jobResources")
    for name, (type_, *_) in WORKLOADS.items():
        if type_ == DEPLOY:
            continue
        _, c = container(g, name)
        assert c["resources"]["requests"] == {"cpu": want["cpu"], "memory": want["memory"]}
        assert c["resources"]["limits"]["memory"] == want["memoryLimit"]
        spec = g.get(type_, name).plain["spec"]
        job = spec["jobTemplate"]["spec"] if type_ == CRON else spec
        assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] <= 3


@pytest.mark.parametrize("stack", STACKS)
def test_every_cronjob_ends_before_its_next_run(stack):
    """11b: a run (even one started late) is stopped before the next is due, runs never
    overlap, and a check job (an alarm) is stopped within minutes — a hung check can no longer
    silence the checks after it (the deadline was 6 h against a 10-15 min schedule)."""
    from infra import cron
    from infra.stack_config import CHECK_DEADLINE_MAX_SECONDS

    g = graph(stack)
    crons = g.of_type(CRON)
    assert {r.name for r in crons} == set(SCHEDULES)
    for r in crons:
        spec = r.plain["spec"]
        interval = cron.min_interval_seconds(spec["schedule"])
        deadline = spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]
        assert spec["schedule"] == stack_value(stack, "schedules")[SCHEDULES[r.name]], r.name
        assert spec["concurrencyPolicy"] == "Forbid", r.name
        assert 0 < deadline < interval, (r.name, deadline, interval)
        assert 10 <= spec["startingDeadlineSeconds"] <= interval - deadline, r.name
        if "--check" in pod_spec(r)["spec"]["containers"][0]["args"]:
            assert deadline <= CHECK_DEADLINE_MAX_SECONDS, r.name


@pytest.mark.parametrize("stack", STACKS)
def test_jobs_are_rerun_after_a_failure_and_waited_for_as_long_as_their_deadline(stack):
    g = graph(stack)
    for name in ("workers-migrate", "workers-stanza"):
        job = g.get(JOB, name)
        assert job.plain["metadata"]["annotations"][workers.REPLACE_UNREADY] == "true"
        deadline = job.plain["spec"]["activeDeadlineSeconds"]
        assert deadline == config(stack).get("tickstack:migrateTimeoutSeconds", 3600)
        assert job.options["customTimeouts"]["create"] >= deadline
        assert job.options["customTimeouts"]["update"] >= deadline


def test_a_restore_target_replaces_the_migrate_job():
    from tests.unit.pulumi_stacks import restore_graph

    normal, rebuild = graph("prod"), restore_graph("prod")
    a = normal.get(JOB, "workers-migrate").plain["spec"]["template"]
    b = rebuild.get(JOB, "workers-migrate").plain["spec"]["template"]
    assert a != b  # a Job's template is immutable: a different one is a new Job
    target = rebuild.outputs["restoreTarget"]
    assert b["metadata"]["annotations"][workers.RESTORE_TARGET_ANNOTATION] == target
    [c] = b["spec"]["containers"]
    assert env_of(c)["TICKSTACK_RESTORE_TARGET"] == target
    from infra.offline import diff

    d = diff.diff_graphs(normal.to_json(), rebuild.to_json())
    [m] = [c for c in d.changed if c.name == "workers-migrate"]
    assert m.replaces


@pytest.mark.parametrize("stack", STACKS)
def test_backup_workers_reach_pgbackrest_with_the_client_certificate(stack):
    g = graph(stack)
    for name in ("workers-stanza", "workers-backup-full", "workers-backup-check"):
        type_ = WORKLOADS[name][0]
        pod, c = container(g, name)
        assert env_of(c)["TICKSTACK_PGBACKREST_CONFIG"] == database.CLIENT_CONF
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {database.CLIENT_DIR, database.CLIENT_TLS_DIR, workers.CA_DIR} <= mounts
        assert "TICKSTACK_PGBACKREST_EXEC_POD" not in env_of(c)
        assert type_ in (JOB, CRON)
    conf = config_map_data(g, "primary-pgbackrest-client-config")["pgbackrest.conf"]
    assert f"pg1-host={g.outputs['primaryHost']}" in conf
    assert "pg1-host-type=tls" in conf
