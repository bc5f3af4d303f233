"""Retention drills on real servers: exact drops and deletes, dry-run, hostile jobs, landing."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO
from tests.integration.pipeline import Stack
from tests.integration.test_ingest_bad_input import write
from workers.db.ingest import ingest_file
from workers.ops import retention

NOW = datetime.now(UTC).replace(microsecond=0)
DAY_MS = 86_400_000


def trades_over(days: int, every_hours: int = 6) -> list[str]:
    """One trade every few hours over the last `days` days (ms timestamps, spot layout)."""
    t0 = int((NOW - timedelta(days=days)).timestamp() * 1000)
    step = every_hours * 3_600_000
    return [f"{7_000_000 + i},{60000 + i % 50}.5,0.01,600.005,{t0 + i * step},"
            f"{'True' if i % 2 else 'False'},True" for i in range(days * DAY_MS // step)]


def stack_with_ticks(env, cluster: str, tmp: Path) -> Stack:
    s = Stack(env, cluster)
    p = write(tmp, trades_over(120), name=f"BTCUSDT-trades-{cluster}.csv")
    with s.ingest_conn() as conn:
        ingest_file(conn, s.landing(), str(p))
    with s.admin() as c:  # only the job under test
        c.execute("UPDATE ops.retention_jobs SET enabled = false")
        c.execute("INSERT INTO ops.retention_jobs (job_name, hypertable, policy) VALUES "
                  "('ticks_90d', 'market_data.btc_ticks', '{\"drop_after\": \"90 days\"}')")
    return s


def retention_conn(s: Stack) -> psycopg.Connection:
    return s.db.connect(user="retention_worker", password=s.env.secrets["retention_worker"])


def counts(s: Stack) -> tuple[int, datetime]:
    with s.admin() as c:
        return c.execute("SELECT count(*), min(bucket_5m) FROM market_data.btc_ticks").fetchone()


@pytest.fixture
def primary(local_env, tmp_path):
    s = stack_with_ticks(local_env, "primary", tmp_path)
    yield s
    s.close()


@pytest.fixture
def replica(local_env, tmp_path):
    s = stack_with_ticks(local_env, "replica", tmp_path)
    yield s
    s.close()


def test_drop_after_drops_exactly_the_old_chunks_on_the_primary(primary):
    cutoff = NOW - timedelta(days=90)
    with primary.admin() as c:
        chunks = c.execute(
            "SELECT chunk_schema || '.' || chunk_name, range_end <= %s "
            "FROM timescaledb_information.chunks WHERE hypertable_name = 'btc_ticks'",
            [cutoff]).fetchall()
        old_rows = sum(c.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
                       for name, old in chunks if old)
    assert any(old for _, old in chunks) and not all(old for _, old in chunks)
    before, _ = counts(primary)

    with retention_conn(primary) as conn:
        [dry] = retention.run(conn, dry_run=True, now=NOW)
    assert dry.outcome == "dry-run" and dry.rows == old_rows
    assert counts(primary)[0] == before  # dry-run changed nothing

    with retention_conn(primary) as conn:
        [res] = retention.run(conn, now=NOW)
    assert res.outcome == "applied"
    assert res.chunks == sum(old for _, old in chunks) and res.rows == old_rows
    after, oldest = counts(primary)
    assert after == before - old_rows
    with primary.admin() as c:
        left = {n for (n,) in c.execute(
            "SELECT chunk_schema || '.' || chunk_name "
            "FROM timescaledb_information.chunks WHERE hypertable_name = 'btc_ticks'")}
        audit = c.execute("SELECT outcome, dry_run, rows, chunks FROM ops.retention_runs "
                          "ORDER BY started_at").fetchall()
    assert left == {n for n, old in chunks if not old}
    assert audit == [("dry-run", True, old_rows, res.chunks),
                     ("applied", False, old_rows, res.chunks)]


def test_drop_after_deletes_exactly_the_old_rows_on_the_replica(replica):
    cutoff = NOW - timedelta(days=90)
    with replica.admin() as c:
        old = c.execute("SELECT count(*) FROM market_data.btc_ticks WHERE bucket_5m < %s",
                        [cutoff]).fetchone()[0]
    before, _ = counts(replica)
    assert 0 < old < before
    with retention_conn(replica) as conn:
        [dry] = retention.run(conn, dry_run=True, now=NOW)
        assert (dry.outcome, dry.rows, counts(replica)[0]) == ("dry-run", old, before)
        [res] = retention.run(conn, now=NOW)
    assert (res.outcome, res.rows) == ("applied", old)
    after, oldest = counts(replica)
    assert after == before - old and oldest >= cutoff


def test_hostile_job_rows_are_rejected_and_audited_while_a_good_job_runs(replica):
    hostile = {
        "injection": ("market_data.btc_ticks; DROP TABLE market_data.btc_ticks", "90 days"),
        "unknown-table": ("market_data.nope", "90 days"),
        "outside-schemas": ("pg_catalog.pg_authid", "90 days"),
        "unmanaged-table": ("landing.raw_blobs_5m", "90 days"),
        "negative": ("market_data.btc_ticks", "-1 days"),
        "fortnight": ("market_data.btc_ticks", "1 fortnight"),
        "too-short": ("market_data.btc_ticks", "5 minutes"),
    }
    with replica.admin() as c:
        for name, (table, interval) in hostile.items():
            c.execute("INSERT INTO ops.retention_jobs (job_name, hypertable, policy) "
                      "VALUES (%s, %s, %s)", [name, table, json.dumps({"drop_after": interval})])
        # Policies without the keys, or with non-string values, never get into the table.
        for bad in ({}, {"drop_after": 90}, {"keep": "1 day"}):
            with pytest.raises(psycopg.errors.CheckViolation), c.transaction():
                c.execute("INSERT INTO ops.retention_jobs (job_name, hypertable, policy) "
                          "VALUES ('bad', 'market_data.btc_ticks', %s)", [json.dumps(bad)])
    before, _ = counts(replica)
    with retention_conn(replica) as conn:
        results = {r.job: r for r in retention.run(conn, now=NOW)}
    assert results["ticks_90d"].outcome == "applied" and results["ticks_90d"].rows > 0
    for name in hostile:
        assert results[name].outcome == "rejected", (name, results[name])
    assert "not a schema-qualified table name" in results["injection"].reason
    assert "not a table tickstack manages" in results["unknown-table"].reason
    assert "not a table tickstack manages" in results["outside-schemas"].reason
    assert "outside [1 day, 100 years]" in results["negative"].reason
    assert "not a PostgreSQL interval" in results["fortnight"].reason
    with replica.admin() as c:
        audited = dict(c.execute("SELECT job_name, outcome FROM ops.retention_runs").fetchall())
        assert c.execute("SELECT to_regclass('market_data.btc_ticks')").fetchone()[0]
    assert audited == {**{n: "rejected" for n in hostile}, "ticks_90d": "applied"}
    assert counts(replica)[0] == before - results["ticks_90d"].rows


def test_validation_rejects_policies_the_worker_might_still_meet(replica):
    targets = {"market_data.btc_ticks": ("bucket_5m", "ticks")}
    with retention_conn(replica) as conn:
        for policy, why in (({}, "none of"), ({"drop_after": 90}, "interval string"),
                            ({"keep": "1 day"}, "unknown policy keys"), ("90 days", "object"),
                            ({"compress_after": "90 days", "drop_after": "30 days"}, "shorter")):
            with pytest.raises(retention.Rejected, match=why):
                retention.validate(conn, targets, "market_data.btc_ticks", policy)


def test_rows_not_in_landing_are_never_removed(replica):
    # A tick written straight to the table (never landed) 100 days ago holds back the cutoff.
    stray = NOW - timedelta(days=100)
    stray_bucket = stray - timedelta(minutes=stray.minute % 5, seconds=stray.second)
    with replica.admin() as c:
        c.execute("INSERT INTO market_data.btc_ticks (bucket_5m, market, symbol, trade_id, "
                  "event_time, price, quantity, quote_quantity, is_buyer_maker) VALUES "
                  "(%s, 'spot', 'BTCUSDT', 1, %s, 60000, 0.5, 30000, false)",
                  [stray_bucket, stray])
        older = c.execute("SELECT count(*) FROM market_data.btc_ticks WHERE bucket_5m < %s",
                          [stray_bucket]).fetchone()[0]
    before, _ = counts(replica)
    with retention_conn(replica) as conn:
        [res] = retention.run(conn, now=NOW)
    assert res.rows == older
    assert "not (fully) in landing" in res.actions[0].held_back
    after, oldest = counts(replica)
    assert after == before - older and oldest == stray_bucket


def test_cli_exit_status_and_dry_run_text(replica):
    with replica.admin() as c:
        c.execute("INSERT INTO ops.retention_jobs (job_name, hypertable, policy) VALUES "
                  "('evil', 'x; DROP TABLE y', '{\"drop_after\": \"90 days\"}')")
    r = replica.cli("retention", "--dry-run")
    assert r.returncode == 1, r.stderr
    assert "ticks_90d (market_data.btc_ticks): dry-run" in r.stdout
    assert "would delete:" in r.stdout
    assert "evil (x; DROP TABLE y): rejected" in r.stdout
    assert counts(replica)[0] > 0
    r = replica.cli("retention", "--job", "nope")
    assert r.returncode == 2 and "no enabled retention job named 'nope'" in r.stderr


def test_job_defined_on_one_server_only(local_env, primary, replica):
    """Issue 21: `--job NAME` that only the primary has runs there and reports the replica as
    lacking it (exit 0); a name no server has is bad input (exit 2)."""
    with primary.admin() as c:
        c.execute("INSERT INTO ops.retention_jobs (job_name, hypertable, policy) VALUES "
                  "('primary_only', 'market_data.btc_ticks', '{\"drop_after\": \"90 days\"}')")
    env = {**primary.cli_env(),
           "TICKSTACK_REPLICA_DSN": local_env.replica.dsn(replica.db.name),
           "TICKSTACK_REPLICA_RETENTION_DSN": local_env.replica.dsn(
               replica.db.name, user="retention_worker")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "workers", "retention", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)

    r = cli("--job", "primary_only", "--dry-run")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "retention primary: primary_only (market_data.btc_ticks): dry-run" in r.stdout
    assert "retention replica: primary_only: not defined on this server" in r.stdout
    r = cli("--job", "nowhere")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "no enabled retention job named 'nowhere' on any server (primary, replica)" in r.stderr
