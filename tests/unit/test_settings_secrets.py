"""Settings read secrets from mounted files (TICKSTACK_SECRETS_DIR): how the cloud hands each
workload its DSNs (a Secret volume), never as environment variables (issue 27, 11a)."""

from __future__ import annotations

import os

import pytest

from workers.core.errors import BadInput
from workers.core.settings import Settings

DSN = "postgresql://embed_worker:pw@db:5432/tickstack?sslmode=verify-full&sslrootcert=/ca.crt"


@pytest.fixture
def clean_env(monkeypatch):
    for k in [k for k in os.environ if k.startswith("TICKSTACK_")]:
        monkeypatch.delenv(k)
    return monkeypatch


def _kubernetes_secret_volume(d, files: dict[str, str]):
    """Laid out as the kubelet does: files are symlinks into a timestamped directory."""
    data = d / "..2026_12_07_13_00_00.000000001"
    data.mkdir(parents=True)
    for k, v in files.items():
        (data / k).write_text(v + "\n")
    (d / "..data").symlink_to(data.name)
    for k in files:
        (d / k).symlink_to(f"..data/{k}")


def test_dsns_come_from_the_mounted_files(clean_env, tmp_path):
    _kubernetes_secret_volume(tmp_path, {"TICKSTACK_PRIMARY_DSN": DSN,
                                         "TICKSTACK_EMBED_DSN": DSN})
    clean_env.setenv("TICKSTACK_SECRETS_DIR", str(tmp_path))
    s = Settings()
    assert s.primary_dsn.get_secret_value() == DSN
    assert s.dsn("embed") == DSN
    assert DSN not in repr(s)
    # The environment still wins (the local environment's way).
    clean_env.setenv("TICKSTACK_EMBED_DSN", "postgresql://other@h/tickstack")
    assert Settings().dsn("embed") == "postgresql://other@h/tickstack"


def test_a_secrets_dir_that_is_not_there_is_bad_input(clean_env, tmp_path):
    clean_env.setenv("TICKSTACK_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(BadInput, match="missing: not a directory"):
        Settings()


def test_without_a_secrets_dir_nothing_is_read_from_files(clean_env):
    assert Settings().primary_dsn.get_secret_value().startswith("postgresql://postgres@")
