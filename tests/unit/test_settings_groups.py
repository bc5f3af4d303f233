"""The seam from Settings to the workers: connection routing decided in one place
(`Settings.dsn`), typed groups handed down, each default defined once (on the Settings field)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from workers.core.errors import BadInput
from workers.core.settings import LOGINS, Settings, default

ADMIN = "postgresql://owner@primary/tickstack"
REPLICA = "postgresql://owner@replica/tickstack"


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("TICKSTACK_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("TICKSTACK_PRIMARY_DSN", ADMIN)
    return monkeypatch


def test_every_login_on_every_server_gets_its_own_dsn_or_the_servers(clean_env):
    for login in LOGINS[1:]:
        clean_env.setenv(f"TICKSTACK_{login.upper()}_DSN", f"postgresql://{login}@primary/t")
    clean_env.setenv("TICKSTACK_REPLICA_DSN", REPLICA)
    clean_env.setenv("TICKSTACK_REPLICA_INGEST_DSN", "postgresql://ingest@replica/t")
    clean_env.setenv("TICKSTACK_REPLICA_RETENTION_DSN", "")  # empty: the replica's own DSN
    s = Settings()
    got = {(login, server): s.dsn(login, server) for login in LOGINS
           for server in ("primary", "replica")}
    assert got == {
        ("admin", "primary"): ADMIN, ("admin", "replica"): REPLICA,
        ("ingest", "primary"): "postgresql://ingest@primary/t",
        ("ingest", "replica"): "postgresql://ingest@replica/t",
        ("embed", "primary"): "postgresql://embed@primary/t", ("embed", "replica"): REPLICA,
        ("retention", "primary"): "postgresql://retention@primary/t",
        ("retention", "replica"): REPLICA,
        ("reader", "primary"): "postgresql://reader@primary/t", ("reader", "replica"): REPLICA,
        ("replicate", "primary"): "postgresql://replicate@primary/t",
        ("replicate", "replica"): REPLICA,
        ("backup", "primary"): "postgresql://backup@primary/t", ("backup", "replica"): REPLICA,
    }
    assert s.servers() == [("primary", ADMIN), ("replica", REPLICA)]
    assert s.servers("retention") == [("primary", "postgresql://retention@primary/t"),
                                      ("replica", REPLICA)]


def test_a_login_without_its_own_dsn_uses_the_primary_and_no_replica_is_bad_input(clean_env):
    s = Settings()
    assert s.dsn("embed") == ADMIN and s.dsn() == ADMIN
    assert s.servers("retention") == [("primary", ADMIN)]
    with pytest.raises(BadInput, match="no replica configured"):
        s.dsn("ingest", "replica")
    with pytest.raises(ValueError, match="unknown login"):
        s.dsn("superuser")


def test_the_context_asks_the_settings(clean_env):
    from workers.app.context import Context

    clean_env.setenv("TICKSTACK_READER_DSN", "postgresql://reader@primary/t")
    ctx = Context(Settings())
    assert ctx.dsn("reader") == "postgresql://reader@primary/t"
    assert ctx.dsn() == ADMIN


def test_groups_carry_the_flat_settings(clean_env):
    clean_env.setenv("TICKSTACK_ARCHIVE_PARALLEL", "7")
    clean_env.setenv("TICKSTACK_STREAM_BATCH_ROWS", "42")
    clean_env.setenv("TICKSTACK_INGEST_FLUSH_ROWS", "1000")
    clean_env.setenv("TICKSTACK_REPLICA_QUEUE", "3")
    clean_env.setenv("TICKSTACK_STANZA", "other")
    s = Settings()
    assert (s.archive.parallel, s.stream.batch_rows, s.ingest.flush_rows, s.replica.queue,
            s.backup.stanza) == (7, 42, 1000, 3, "other")
    for group in (s.archive, s.stream, s.ingest, s.replica, s.backup):
        assert dataclasses.is_dataclass(group)
        # no defaults of their own: every value comes from a Settings field
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(group))


def test_worker_configs_take_their_defaults_from_the_settings_fields(clean_env):
    from workers.db.stream import StreamConfig
    from workers.replica.writer import ReplicaWriter
    from workers.sources.archive_download import ArchiveConfig
    from workers.sources.binance_files import Limits

    s = Settings()  # nothing set but the DSN: every value is its field's default
    assert ArchiveConfig("u", Path(s.archive.cache_dir)) == dataclasses.replace(
        ArchiveConfig.of(s.archive), base_url="u")
    assert Limits() == Limits.of(s.ingest)
    assert StreamConfig("wss://x") == StreamConfig.of(s.stream, "wss://x", "BTCUSDT", "spot")
    params = inspect.signature(ReplicaWriter).parameters
    assert (params["timeout"].default, params["failures_to_open"].default,
            params["cooldown"].default, params["queue_max"].default) == (
        s.replica.timeout_seconds, s.replica.breaker_failures,
        s.replica.breaker_cooldown_seconds, s.replica.queue)
    assert default("ingest_max_zip_ratio") == Settings.model_fields[
        "ingest_max_zip_ratio"].default


def test_no_config_class_is_built_from_the_whole_settings_any_more():
    from tests.conftest import REPO

    offenders = [p.relative_to(REPO).as_posix() for p in (REPO / "workers").rglob("*.py")
                 if "def from_settings" in p.read_text()]
    assert offenders == []
