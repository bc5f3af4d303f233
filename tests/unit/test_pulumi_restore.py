"""Disaster-recovery rebuild: `tickstack:restore` brings the primary up from the backup bucket."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infra.components import access, database
from tests.unit.pulumi_stacks import (
    RESTORE,
    STACKS,
    depends_on,
    graph,
    pod_spec,
    restore_graph,
)

STS = "kubernetes:apps/v1:StatefulSet"
JOB = "kubernetes:batch/v1:Job"
TARGET = "2025-03-01T12:00:00+00:00"


def db_pod(g) -> dict:
    return g.get(STS, "primary-statefulset").plain["spec"]["template"]


@pytest.mark.parametrize("stack", STACKS)
def test_normal_stacks_start_an_empty_database(stack):
    g = graph(stack)
    assert db_pod(g)["spec"]["initContainers"] == []
    assert [r.name for r in g.of_type(JOB)] == ["workers-migrate", "workers-stanza"]
    assert g.outputs["restoreTarget"] == ""


@pytest.mark.parametrize("stack", STACKS)
def test_restore_runs_pgbackrest_before_postgres_starts(stack):
    g = restore_graph(stack)
    pod = db_pod(g)
    [init] = pod["spec"]["initContainers"]
    [pg] = [c for c in pod["spec"]["containers"] if c["name"] == database.CONTAINER]
    assert init["image"] == pg["image"]  # the primary image carries pgBackRest
    assert init["securityContext"] == pg["securityContext"]
    # Same data volume, same pgbackrest.conf; only postgres reads the superuser's password.
    assert init["volumeMounts"] == [m for m in pg["volumeMounts"] if m["name"] != "superuser"]
    cmd = init["command"]
    assert cmd[:4] == ["sh", "-c", database.RESTORE_SCRIPT, "restore"]
    args = cmd[4:]
    assert args[-1] == "restore"
    assert f"--target={TARGET}" in args
    assert "--type=time" in args and "--target-action=promote" in args
    assert f"--set={RESTORE['backupSet']}" in args
    assert f"--config={database.PGBACKREST_CONF}" in args
    # Its AWS access is the pod's: the db service account's IRSA role (backup bucket).
    assert pod["spec"]["serviceAccountName"] == access.DB_SA
    assert pod["metadata"]["annotations"]["tickstack.io/restore-target"] == TARGET
    assert g.outputs["restoreTarget"] == TARGET


def test_without_a_backup_set_pgbackrest_picks_the_newest_before_the_target():
    g = graph("dev", **{"tickstack:restore": {"targetTime": RESTORE["targetTime"]}})
    [init] = db_pod(g)["spec"]["initContainers"]
    assert not any(a.startswith("--set") for a in init["command"])


@pytest.mark.parametrize("stack", STACKS)
def test_landing_replay_job_runs_after_migrations_and_before_the_workers(stack):
    g = restore_graph(stack)
    job = g.get(JOB, "workers-restore")
    [c] = pod_spec(job)["spec"]["containers"]
    assert c["args"] == ["restore", "--target-time", TARGET, "--skip-pitr"]
    assert pod_spec(job)["spec"]["serviceAccountName"] == "tickstack-restore"
    assert f"{JOB}::workers-migrate" in depends_on(g, job)
    for t in ("kubernetes:apps/v1:Deployment", "kubernetes:batch/v1:CronJob"):
        for r in g.of_type(t):
            assert f"{JOB}::workers-restore" in depends_on(g, r), r.name


def test_restore_changes_only_the_rebuild_parts():
    def shape(g):
        return {(r.type, r.name) for r in g.resources}

    assert shape(restore_graph("prod")) - shape(graph("prod")) == {
        (JOB, "workers-restore"), ("kubernetes:core/v1:Secret", "workers-dsn-restore"),
        # The replay's own identity, only while a rebuild is configured (grants.GRANTS).
        ("kubernetes:core/v1:ServiceAccount", "access-sa-tickstack-restore"),
        ("aws:iam/role:Role", "access-restore"),
        ("aws:iam/rolePolicy:RolePolicy", "access-restore-policy")}
    assert shape(graph("prod")) <= shape(restore_graph("prod"))
    # Buckets, keys, the replica: untouched by a rebuild.
    for t, n in (("aws:s3/bucket:Bucket", "storage-backup"),
                 ("aws:rds/instance:Instance", "replica-db"),
                 ("aws:kms/key:Key", "storage-key")):
        assert restore_graph("prod").get(t, n).plain == graph("prod").get(t, n).plain


# --- the init container's script, run for real with a stand-in pgbackrest -----------------


def run_script(tmp_path: Path, with_database: bool) -> tuple[subprocess.CompletedProcess, Path]:
    pgdata = tmp_path / "pgdata" / "data"
    if with_database:
        pgdata.mkdir(parents=True)
        (pgdata / "PG_VERSION").write_text("16\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    fake = bindir / "pgbackrest"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {calls}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PGDATA": str(pgdata), "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(["sh", "-c", database.RESTORE_SCRIPT, "restore", "--stanza=tickstack",
                        "--type=time", "restore"], env=env, capture_output=True, text=True,
                       timeout=30)
    return r, calls


def test_script_restores_into_an_empty_volume(tmp_path):
    r, calls = run_script(tmp_path, with_database=False)
    assert r.returncode == 0, r.stderr
    assert calls.read_text().split() == ["--stanza=tickstack", "--type=time", "restore"]
    pgdata = tmp_path / "pgdata" / "data"
    assert pgdata.is_dir() and (pgdata.stat().st_mode & 0o777) == 0o700


def test_script_never_restores_over_a_database(tmp_path):
    r, calls = run_script(tmp_path, with_database=True)
    assert r.returncode == 0
    assert not calls.exists()
    assert "not restoring over it" in r.stdout
