"""The worker entry point and its settings."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO
from workers.core.settings import Settings


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_help_lists_the_design_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("migrate", "ingest", "stream", "replicate", "embed", "similar", "retention",
                "backup", "restore"):
        assert cmd in r.stdout


def test_unknown_command_is_usage_error():
    assert run("frobnicate").returncode == 2


def test_settings_from_prefixed_env(monkeypatch):
    monkeypatch.setenv("TICKSTACK_PRIMARY_DSN", "postgresql://u:secretpw@h/db")
    monkeypatch.setenv("TICKSTACK_REPLICA_DSN", "")
    monkeypatch.setenv("TICKSTACK_LANDING_BUCKET", "my-landing")
    s = Settings()
    assert s.landing_bucket == "my-landing"
    assert not s.has_replica
    assert "secretpw" not in repr(s)
    assert s.primary_dsn.get_secret_value().endswith("/db")


def test_health_endpoint_binds_loopback_unless_told(monkeypatch):
    # The cloud passes the pod's IP (status.podIP); nothing listens on every interface.
    monkeypatch.delenv("TICKSTACK_HEALTH_HOST", raising=False)
    assert Settings().health_host == "127.0.0.1"
    monkeypatch.setenv("TICKSTACK_HEALTH_HOST", "10.1.2.3")
    assert Settings().health_host == "10.1.2.3"


def test_a_missing_logins_file_is_a_usage_error_naming_it(tmp_path):
    import os

    env = {**os.environ, "TICKSTACK_WORKER_LOGINS_FILE": str(tmp_path / "absent.json"),
           "TICKSTACK_PRIMARY_DSN": "postgresql://nobody@127.0.0.1:1/x",
           "TICKSTACK_REPLICA_DSN": ""}
    r = subprocess.run([sys.executable, "-m", "workers", "migrate"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "absent.json" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.json").write_text('["not", "an", "object"]')
    env["TICKSTACK_WORKER_LOGINS_FILE"] = str(tmp_path / "bad.json")
    r = subprocess.run([sys.executable, "-m", "workers", "migrate"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "bad.json" in r.stderr, r.stderr
