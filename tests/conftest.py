"""Test harness: throwaway servers for the whole session, never the user's `make up` environment.

The clusters live under /tmp (not inside the checkout: CI clones into a 0700 `mktemp -d`, which
the `postgres` user cannot traverse) and are torn down and deleted at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(items):
    # Tests under tests/unit are unit tests, under tests/integration integration tests.
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)


def make_state_dir(prefix: str = "tickstack-test-") -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    return d


@contextlib.contextmanager
def _environment():
    from infra.local.env import LocalEnv

    state = make_state_dir()
    env = LocalEnv(state)
    try:
        env.up()
        yield env
    finally:
        try:
            env.down(save_s3=False)
        finally:
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def local_env():
    """A complete local environment (primary, replica, S3 + TLS, pgBackRest), up for the session."""
    with _environment() as env:
        yield env


@pytest.fixture
def own_local_env():
    """A complete local environment of the test's own: for tests that stop and start every part
    (the session's S3 server holds every earlier test's backups, which a restart re-reads)."""
    with _environment() as env:
        yield env


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data missing: {SHARED_DATA} (../shared must sit beside the checkout)")
    return SHARED_DATA
