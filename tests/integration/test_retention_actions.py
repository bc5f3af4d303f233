"""The retention actions' keys (workers/ops/retention_actions.py) against the SQL that returns
or reads them, on a real migrated primary — the functions as the last migration left them:
ops.retention_chunks returns the Chunk row's columns; ops.retention_horizon reads, from the
audited actions, the keys and kinds the classes define; what a run audits reads back typed."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest

from tests.integration.db import FreshDb
from workers.db import migrate
from workers.ops import retention
from workers.ops.retention_actions import KINDS, REMOVING, Chunk, Delete, DropChunks, from_dict

TICKS = "market_data.btc_ticks"


@pytest.fixture(scope="module")
def primary(local_env):
    db = FreshDb(local_env, "primary")
    migrate.run(db.dsn, password=db.password, logins=local_env.worker_logins())
    yield db
    db.drop()


def test_retention_chunks_returns_the_chunk_rows_columns(primary):
    with primary.connect() as c:
        names, modes = c.execute(
            "SELECT proargnames, proargmodes FROM pg_proc "
            "WHERE oid = 'ops.retention_chunks(text, timestamptz)'::regprocedure").fetchone()
    assert [n for n, m in zip(names, modes, strict=True) if m == "t"] == list(Chunk._fields)


def test_retention_horizon_reads_the_keys_and_kinds_the_classes_define(primary):
    with primary.connect() as c:
        body = c.execute("SELECT pg_get_functiondef('ops.retention_horizon(text)'::regprocedure)"
                         ).fetchone()[0]
    keys = set(re.findall(r"\ba->>'(\w+)'", body))
    kinds = re.search(r"a->>'action'\s+IN\s*\(([^)]*)\)", body)
    assert keys and kinds, body
    assert tuple(re.findall(r"'(\w+)'", kinds.group(1))) == REMOVING
    for kind in REMOVING:
        assert keys <= set(KINDS[kind].required()), (kind, keys)


@pytest.mark.parametrize("action", [
    DropChunks(cutoff="2024-01-01T00:00:00+00:00", chunks=1, rows=5, range=None),
    Delete(cutoff="2024-01-01T00:00:00+00:00", rows=5, range=None)])
def test_an_audited_removal_sets_the_horizon_and_reads_back_typed(primary, action):
    with primary.connect() as c:
        c.execute("DELETE FROM ops.retention_runs")
        res = retention.JobResult("btc_ticks", TICKS, "applied", [action])
        retention._audit(c, uuid.uuid4(), datetime.now(UTC), False, res)
        horizon = c.execute("SELECT ops.retention_horizon(%s)", [TICKS]).fetchone()[0]
        [(stored,)] = c.execute("SELECT detail->'actions' FROM ops.retention_runs").fetchall()
    assert horizon == datetime(2024, 1, 1, tzinfo=UTC)
    assert [from_dict(a) for a in stored] == [action]


def test_what_a_real_run_audits_reads_back_typed(primary):
    with primary.connect() as c:
        c.execute("DELETE FROM ops.retention_runs")
        results = retention.run(c, dry_run=True)
        stored = [a for (acts,) in c.execute("SELECT detail->'actions' FROM ops.retention_runs")
                  for a in acts]
    assert [r.job for r in results] == ["btc_ohlcv_5m", "btc_ticks"]
    assert [from_dict(a) for a in stored] == [a for r in results for a in r.actions]
    assert {a["action"] for a in stored} == {"delete", "compress"}  # bars: a plain table


def test_the_policy_keys_are_the_ones_the_jobs_table_allows(primary):
    with primary.connect() as c:
        check = c.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                          "WHERE conname = 'retention_policy_shape'").fetchone()[0]
    allowed = re.search(r"policy - ARRAY\[([^\]]*)\]", check)
    assert allowed, check
    assert tuple(re.findall(r"'(\w+)'", allowed.group(1))) == retention.POLICY_KEYS
