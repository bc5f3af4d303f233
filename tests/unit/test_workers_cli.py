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
