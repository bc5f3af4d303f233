"""Every workload the Pulumi program renders runs for real (tests/integration/cloudsim.py).

For dev and prod: the servers are bootstrapped from the render exactly as the cloud's would be
(the primary's image from the StatefulSet's env, RDS from the instance's inputs), then every
Job, Deployment and CronJob container runs its exact command and arguments with the env and
volumes Kubernetes would give it, against those servers. Each must succeed: the migrations
Job (which must create its own database: nothing else does), the stanza Job, the stream
Deployment (ready, then a clean SIGTERM), and every CronJob — a backup taken through
pgBackRest's TLS server with the client certificate, `backup --check` healthy after it,
replicate as its own replica login.

Every S3 request each workload makes is recorded by the local S3 server and must be in that
workload's IAM row (infra/components/grants.py): the IAM policies are tied to the code.

Then deliberately broken renders — a wrong env name, a missing secret key, a DSN naming a
database nobody creates, a wrong argument — must each fail here: what mocks let through.
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest

from infra.local.s3 import s3_client
from tests.conftest import make_state_dir
from tests.integration import cloudsim, s3record
from tests.integration.wsreplay import ReplayServer, trade_messages
from tests.unit import pulumi_stacks

# The order a first deploy runs them in (Pulumi's dependencies), then the schedules'.
JOBS = ("workers-migrate", "workers-stanza")
CRONJOBS = ("workers-replicate", "workers-embed", "workers-retention", "workers-backup-full",
            "workers-backup-diff", "workers-backup-check")


@pytest.fixture(scope="module")
def sims():
    made: dict[str, tuple] = {}

    def get(stack: str) -> tuple:
        if stack not in made:
            state = make_state_dir("tickstack-cloudsim-")
            # The local S3 server's request recorder writes here (s3record.Recording).
            mp = pytest.MonkeyPatch()
            mp.setenv("MOTO_RECORDER_FILEPATH", str(state / "s3-recording.jsonl"))
            try:
                env, r = cloudsim.bootstrap(pulumi_stacks.graph(stack), state)
            except BaseException:
                shutil.rmtree(state, ignore_errors=True)
                raise
            finally:
                mp.undo()
            made[stack] = (env, r, state)
        return made[stack][:2]

    try:
        yield get
    finally:
        for env, _, state in made.values():
            try:
                env.down(save_s3=False)
            finally:
                shutil.rmtree(state, ignore_errors=True)


def explain(run: cloudsim.Run) -> str:
    return f"{run.name} ({run.container}): exit {run.returncode}\n{' '.join(run.argv)}\n" \
           f"{run.output[-4000:]}"


@pytest.mark.parametrize("stack", pulumi_stacks.STACKS)
def test_every_rendered_workload_runs_and_succeeds(sims, stack, tmp_path):
    env, r = sims(stack)
    expected = set(JOBS) | set(CRONJOBS) | {"workers-ingest"}
    assert set(r.workloads) == expected, "a workload this test does not run"
    # Nothing of ours exists on the primary before the migrations Job: it creates it.
    assert env.primary.psql("SELECT count(*) FROM pg_database WHERE datname = 'tickstack'") == "0"
    m = cloudsim.Mapping(env, r)
    calls: list[s3record.S3Call] = []

    def recorded(run_it):
        with s3record.Recording(env.moto.endpoint) as rec:
            run = run_it()
        calls.extend(rec.calls(cloudsim.identities_by_key()))
        return run

    for name in JOBS:
        run = recorded(lambda n=name: cloudsim.run_job(m, r.workloads[n], tmp_path))
        assert run.ok, explain(run)
    assert env.primary.psql("SELECT count(*) FROM pg_database WHERE datname = 'tickstack'") == "1"
    landing = s3_client(env.moto.endpoint)

    def compacted() -> bool:
        """a closed bucket compacted into its landing object (its parts then deleted)"""
        return bool(landing.list_objects_v2(Bucket=r.outputs["landingBucket"],
                                            Prefix="raw/").get("KeyCount"))

    with ReplayServer(trade_messages()) as srv:
        m.replay_url = srv.url
        # Runs until the stream has compacted a bucket (the replay crosses 5-minute
        # boundaries): the read-merge-write and the deletion of the parts are exercised too.
        run = recorded(lambda: cloudsim.run_deployment(m, r.workloads["workers-ingest"],
                                                       tmp_path, until=compacted))
    assert run.ok, explain(run)
    for name in CRONJOBS:
        run = recorded(lambda n=name: cloudsim.run_job(m, r.workloads[n], tmp_path))
        assert run.ok, explain(run)
    # Every S3 request each workload made (its own key) is in its IAM row (issue 27, 9): a new
    # S3 call in the code without a grant fails here, as it would fail in the cloud.
    buckets = {r.outputs["landingBucket"]: "landing", r.outputs["backupBucket"]: "backup"}
    assert s3record.outside_grants(calls, buckets) == []
    made = {(c.identity, c.action) for c in calls}
    assert {("ingest", "s3:PutObject"), ("ingest", "s3:DeleteObject"), ("db", "s3:PutObject"),
            ("backup", "s3:PutObject"), ("backup-check", "s3:GetObject")} <= made, \
        " ".join(map(str, sorted(made)))
    # The stream's trades reached both servers (the replica as the ingest login), and the
    # backup went through the TLS server into the stack's backup bucket.
    ticks = env.primary.psql("SELECT count(*) FROM market_data.btc_ticks", db="tickstack")
    assert int(ticks) > 0
    assert env.replica.psql("SELECT count(*) FROM market_data.btc_ticks", db="tickstack") == ticks
    info = env.pgbackrest("info", "--output=json", client=True)
    assert info.returncode == 0 and '"type":"diff"' in info.stdout.replace(" ", "")


def test_the_dr_replay_jobs_s3_calls_are_in_its_iam_row(sims, tmp_path):
    """The restore Job (only in a DR rebuild's render) compacts the stream's leftover parts
    into their bucket objects, deletes the parts, then replays landing: each of its S3 requests
    must be in its own IAM row."""
    env, r = sims("dev")
    rebuild = cloudsim.rendered(pulumi_stacks.restore_graph("dev"))
    assert rebuild.outputs["landingBucket"] == r.outputs["landingBucket"]
    m = cloudsim.Mapping(env, rebuild)
    run = cloudsim.run_job(m, rebuild.workloads["workers-migrate"], tmp_path)
    assert run.ok, explain(run)
    with ReplayServer(trade_messages()) as srv:  # leaves parts of open buckets in landing
        m.replay_url = srv.url
        run = cloudsim.run_deployment(m, rebuild.workloads["workers-ingest"], tmp_path)
    assert run.ok, explain(run)
    with s3record.Recording(env.moto.endpoint) as rec:
        run = cloudsim.run_job(m, rebuild.workloads["workers-restore"], tmp_path)
    assert run.ok, explain(run)
    calls = rec.calls(cloudsim.identities_by_key())
    buckets = {r.outputs["landingBucket"]: "landing", r.outputs["backupBucket"]: "backup"}
    assert s3record.outside_grants(calls, buckets) == []
    made = {(c.identity, c.action, c.key.split("/")[0]) for c in calls}
    assert {("restore", "s3:ListBucket", "raw"), ("restore", "s3:GetObject", "raw"),
            ("restore", "s3:DeleteObject", "stream")} <= made, " ".join(map(str, sorted(made)))


def _broken(r: cloudsim.Rendered, edit) -> cloudsim.Rendered:
    b = copy.deepcopy(r)
    edit(b)
    return b


def _secret(b: cloudsim.Rendered, name: str) -> dict:
    return b.get("Secret", name)["stringData"]


def _wrong_env_name(b):  # a misspelt setting: the worker never sees its DSN
    data = _secret(b, "tickstack-dsn-embed")
    for k in [k for k in data if k.endswith("_DSN")]:
        data[k.removesuffix("_DSN") + "_URL"] = data.pop(k)


def _missing_secret_key(b):  # a secretKeyRef to a key the Secret does not have
    [c] = b.workloads["workers-migrate"].pod["spec"]["containers"]
    c.setdefault("env", []).append({"name": "TICKSTACK_WORKER_LOGINS_FILE", "valueFrom": {
        "secretKeyRef": {"name": "tickstack-worker-logins", "key": "logins.yaml"}}})


def _unmade_database(b):  # a DSN naming a database nobody creates
    data = _secret(b, "tickstack-dsn-embed")
    for k in data:
        data[k] = data[k].replace("/tickstack?", "/tickstack_reports?")


def _wrong_argument(b):
    [c] = b.workloads["workers-migrate"].pod["spec"]["containers"]
    c["args"] = ["migrate", "--dry-run"]


@pytest.mark.parametrize(("edit", "workload", "says"), [
    (_wrong_env_name, "workers-embed", ""),
    (_missing_secret_key, "workers-migrate", "has no key 'logins.yaml'"),
    (_unmade_database, "workers-embed", "tickstack_reports"),
    (_wrong_argument, "workers-migrate", "--dry-run"),
], ids=["wrong-env-name", "missing-secret-key", "dsn-names-an-unmade-database",
        "wrong-argument"])
def test_a_broken_render_fails(sims, tmp_path, edit, workload, says):
    env, r = sims("dev")
    m = cloudsim.Mapping(env, r)
    # The unbroken workload succeeds here (migrated first, so embed has its schema)...
    for name in ("workers-migrate", workload):
        good = cloudsim.run_job(m, r.workloads[name], tmp_path / "good")
        assert good.ok, explain(good)
    # ...and the broken one does not.
    b = _broken(r, edit)
    bad = cloudsim.run_job(cloudsim.Mapping(env, b), b.workloads[workload], tmp_path / "bad")
    assert not bad.ok, explain(bad)
    assert says in bad.output, explain(bad)


def test_a_broken_bootstrap_contract_fails(tmp_path):
    """The primary's password is the Secret file POSTGRES_PASSWORD_FILE names: a file the
    Secret does not have fails before any server starts (the entry point would refuse)."""
    g = pulumi_stacks.graph("dev")
    r = cloudsim.rendered(g)
    sts = r.get("StatefulSet", "tickstack-db")
    [pg] = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "postgres"]
    [pw] = [e for e in pg["env"] if e["name"] == "POSTGRES_PASSWORD_FILE"]
    pw["value"] = pw["value"].rsplit("/", 1)[0] + "/password"
    with pytest.raises(cloudsim.Unresolvable, match="has no key 'password'"):
        cloudsim.primary_boot_env(r)


# --- the primary's in-place major upgrade (tickstack:primaryMajorUpgrade) ----------------------

UPGRADE_JOB = "primary-major-upgrade"
# A primary of the previous build with data: a hypertable with compressed and uncompressed
# chunks (TimescaleDB of the previous release), vectors with an ivfflat index, a second database.
PREVIOUS_DATA = [
    ("CREATE DATABASE tickstack", "postgres"),
    ("CREATE DATABASE reports", "postgres"),
    ("CREATE EXTENSION timescaledb", "tickstack"),
    ("CREATE EXTENSION vector", "tickstack"),
    ("CREATE EXTENSION timescaledb", "reports"),
    ("CREATE TABLE ticks (t timestamptz NOT NULL, symbol text NOT NULL, price numeric, "
     "qty numeric)", "tickstack"),
    ("SELECT create_hypertable('ticks', 't', chunk_time_interval => interval '1 day')",
     "tickstack"),
    ("INSERT INTO ticks SELECT timestamptz '2024-01-01' + i * interval '7 s', "
     "CASE WHEN i % 3 = 0 THEN 'ETHUSDT' ELSE 'BTCUSDT' END, 40000 + i % 997, "
     "(i % 13) / 10.0 FROM generate_series(0, 60000) i", "tickstack"),
    ("ALTER TABLE ticks SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol')",
     "tickstack"),
    ("SELECT count(compress_chunk(c)) FROM show_chunks('ticks', "
     "older_than => timestamptz '2024-01-04') c", "tickstack"),
    ("CREATE TABLE emb (id int PRIMARY KEY, v vector(8))", "tickstack"),
    ("INSERT INTO emb SELECT i, ('[' || array_to_string(ARRAY(SELECT sin(i * k) FROM "
     "generate_series(1, 8) k), ',') || ']')::vector FROM generate_series(1, 2000) i",
     "tickstack"),
    ("CREATE INDEX emb_ivf ON emb USING ivfflat (v vector_l2_ops) WITH (lists = 8)",
     "tickstack"),
]
# What must be the same after the upgrade.
DIGESTS = [
    ("SELECT symbol || ' ' || count(*) || ' ' || sum(price * qty) || ' ' || min(t) || ' ' "
     "|| max(t) FROM ticks GROUP BY symbol ORDER BY symbol", "tickstack"),
    ("SELECT string_agg(chunk_name || ':' || is_compressed, ',' ORDER BY range_start) FROM "
     "timescaledb_information.chunks WHERE hypertable_name = 'ticks'", "tickstack"),
    ("SET ivfflat.probes = 8; SELECT string_agg(id::text, ',') FROM (SELECT id FROM emb "
     "ORDER BY v <-> '[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]' LIMIT 10) k", "tickstack"),
    ("SELECT count(*) || ' ' || md5(string_agg(v::text, '' ORDER BY id)) FROM emb",
     "tickstack"),
]


def _previous_primary(env) -> list[str]:
    """The local primary made and started with the previous build (PostgreSQL and TimescaleDB
    of the version table's PG_PREVIOUS_MAJOR row), on the rendered configuration, archiving to
    the stack's backup bucket under its stanza, with data and a full backup."""
    from infra import versions
    from infra.local.procs import chown_db, make_db_dir, run_db

    old = versions.load().pg_previous_bindir
    env.preflight()
    env.moto.start()
    env.moto.ensure_buckets([env.landing_bucket, env.backup_bucket])
    env.stunnel.start()
    env.tls.ensure()
    p = env.primary
    make_db_dir(p.root, 0o700)
    make_db_dir(p.socket_dir, 0o700)
    pw = p.root / "pw"
    pw.write_text(p.password + "\n")
    chown_db(pw, 0o600)
    run_db([str(old / "initdb"), "-D", str(p.data), "-U", "postgres", "--pwfile", str(pw),
            "--auth-local=peer", "--auth-host=scram-sha-256", "--data-checksums", "-E",
            "UTF8", "--locale=C.UTF-8"])
    pw.unlink()
    env.render()
    run_db([str(old / "pg_ctl"), "-D", str(p.data), "-l", str(p.log), "-o",
            p.start_options(), "-w", "-t", "60", "start"],
           env={**os.environ, **env.pgbackrest_env()}, timeout=90)
    env.ensure_stanza()
    for sql, database in PREVIOUS_DATA:
        p.psql(sql, db=database)
    r = env.pgbackrest("backup", "--type=full", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    digests = _digests(env)
    run_db([str(old / "pg_ctl"), "-D", str(p.data), "-m", "fast", "-w", "-t", "60", "stop"],
           timeout=90)
    return digests


def _digests(env) -> list[str]:
    return [env.primary.psql(sql, db=database) for sql, database in DIGESTS]


def test_the_major_upgrade_job_upgrades_a_primary_with_data(tmp_path):
    """The rendered upgrade Job — its exact command, the image's files and environment, the
    primary's volume and pgBackRest configuration — run against a primary of the previous
    build with data (the StatefulSet at 0: the server stopped): it succeeds, and the volume
    holds the table's major with the same data, the extensions at the table's versions, the
    stanza upgraded (its S3 requests in the Job's own IAM row); the primary then starts on it,
    archives, takes a full backup, and the old cluster is deleted after that."""
    from infra import versions
    from infra.local.env import LocalEnv
    from infra.local.procs import run_db
    from tests.integration import cloudsim_db

    v = versions.load()
    r = cloudsim.rendered(pulumi_stacks.graph("dev", **{"tickstack:primaryMajorUpgrade": True}))
    assert r.get("StatefulSet", "tickstack-db")["spec"]["replicas"] == 0
    state = make_state_dir("tickstack-cloud-upgrade-")
    mp = pytest.MonkeyPatch()
    mp.setenv("MOTO_RECORDER_FILEPATH", str(state / "s3-recording.jsonl"))
    env = LocalEnv(state, landing_bucket=r.outputs["landingBucket"],
                   backup_bucket=r.outputs["backupBucket"])
    try:
        before = _previous_primary(env)
        assert (env.primary.data / "PG_VERSION").read_text().strip() == v.pg_previous_major
        m = cloudsim.Mapping(env, r)
        with s3record.Recording(env.moto.endpoint) as rec:
            run = cloudsim_db.run_primary_job(m, r.workloads[UPGRADE_JOB], state / "jobs")
        assert run.ok, explain(run)
        assert (env.primary.data / "PG_VERSION").read_text().strip() == v.pg_major
        assert (env.primary.root / f"data.pg{v.pg_previous_major}").is_dir()  # until the backup
        assert "stanza-upgrade" in run.output, run.output
        calls = rec.calls(cloudsim.identities_by_key())
        buckets = {r.outputs["landingBucket"]: "landing", r.outputs["backupBucket"]: "backup"}
        assert s3record.outside_grants(calls, buckets) == []
        assert ("major-upgrade", "s3:PutObject") in {(c.identity, c.action) for c in calls}

        # The StatefulSet back (the table's PostgreSQL on the volume): the same data.
        env.primary.start(env=env.pgbackrest_env())
        assert _digests(env) == before
        exts = env.primary.psql("SELECT string_agg(extname || ' ' || extversion, ',' ORDER BY "
                                "extname) FROM pg_extension WHERE extname <> 'plpgsql'",
                                db="tickstack")
        assert exts == f"timescaledb {v.timescaledb},vector {v.pgvector}"
        assert env.primary.psql("SELECT extversion FROM pg_extension WHERE extname = "
                                "'timescaledb'", db="reports") == v.timescaledb
        # Compression still works on the new major.
        env.primary.psql("SELECT count(compress_chunk(c, if_not_compressed => true)) FROM "
                         "show_chunks('ticks') c", db="tickstack")
        assert env.primary.psql("SELECT bool_and(is_compressed) FROM timescaledb_information."
                                "chunks WHERE hypertable_name = 'ticks'", db="tickstack") == "t"
        # The upgraded stanza archives and backs up (the runbook's full backup).
        chk = env.pgbackrest("check", timeout=180)
        assert chk.returncode == 0, chk.stdout + chk.stderr
        full = env.pgbackrest("backup", "--type=full", timeout=300)
        assert full.returncode == 0, full.stdout + full.stderr
        info = json.loads(env.pgbackrest("info", "--output=json").stdout)[0]
        assert [d["version"] for d in info["db"]] == [v.pg_previous_major, v.pg_major]
        assert info["backup"][-1]["type"] == "full" and info["backup"][-1]["database"]["id"] == 2
        # Then, and only then, the old cluster goes (the runbook's last step).
        script = state / "jobs" / UPGRADE_JOB / "image-bin" / "tickstack-major-upgrade"
        gone = run_db([str(script), "--data", str(env.primary.data), "--delete-old"],
                      check=False, env=dict(os.environ))
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert not (env.primary.root / f"data.pg{v.pg_previous_major}").exists()
    finally:
        mp.undo()
        try:
            env.down(save_s3=False)
        finally:
            shutil.rmtree(state, ignore_errors=True)
