"""Where pgBackRest runs: locally, or in the primary's pod through the Kubernetes API (the
cloud's backup CronJobs). The Kubernetes API cannot run here, so only the hand-off is checked."""

from __future__ import annotations

import subprocess

import pytest

from workers.core.settings import Settings
from workers.ops import backup, podexec


def test_exec_pod_setting_routes_pgbackrest_into_the_pod_without_keys(monkeypatch):
    calls = []

    def fake_run(target, cmd, *, env, timeout):
        calls.append((target, cmd, env, timeout))
        return subprocess.CompletedProcess(cmd, 0, '[{"name": "tickstack"}]', "")

    monkeypatch.setattr(podexec, "run", fake_run)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")  # must not travel to the pod
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    s = Settings(pgbackrest_config="/etc/pgbackrest/pgbackrest.conf", stanza="tickstack",
                 pgbackrest_exec_pod="tickstack-db-0", pgbackrest_exec_container="postgres",
                 pgbackrest_exec_namespace="tickstack")
    tool = backup.Tool.from_settings(s)
    assert tool.info() == {"name": "tickstack"}
    target, cmd, env, _ = calls[0]
    assert target == podexec.PodTarget("tickstack-db-0", "postgres", "tickstack")
    assert cmd == ["pgbackrest", "--config=/etc/pgbackrest/pgbackrest.conf",
                   "--stanza=tickstack", "info", "--output=json"]
    assert env == {}


def test_without_exec_pod_pgbackrest_runs_here():
    s = Settings(pgbackrest_config="/nonexistent/pgbackrest.conf")
    assert backup.Tool.from_settings(s).pod is None


def test_pod_namespace_unknown_outside_kubernetes_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.setattr(podexec, "SA_NAMESPACE", tmp_path / "absent")
    with pytest.raises(RuntimeError, match="TICKSTACK_PGBACKREST_EXEC_NAMESPACE"):
        podexec.PodTarget("tickstack-db-0").resolved_namespace()
    (tmp_path / "ns").write_text("tickstack-prod\n")
    monkeypatch.setattr(podexec, "SA_NAMESPACE", tmp_path / "ns")
    assert podexec.PodTarget("tickstack-db-0").resolved_namespace() == "tickstack-prod"
