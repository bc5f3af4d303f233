"""`workers repair` on real servers (issue 27, item 8): a primary that lost rows landing holds.

The loss is made as the misuse before sql/021 made it — DELETEs straight on the primary (here
as the superuser, since no worker login may any more): whole buckets, part of a bucket, single
ticks all over the day, an aggregate row. `replicate --check` flags the difference but only ever
repairs the replica; `repair` gives the primary its rows back from landing, as the ingest login,
and a second run changes nothing. What retention removed on purpose is never re-loaded.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.pipeline import Stack
from tests.integration.test_replica import Replica, cli, cli_env
from workers.db.ingest import ingest_file

DAY = "BTCUSDT-trades-2019-04-01"


@pytest.fixture
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


@pytest.fixture
def replica(local_env):
    r = Replica(local_env)
    yield r
    r.db.drop()


def ohlcv(stack: Stack) -> list[tuple]:
    with stack.admin() as c:
        return c.execute("SELECT market, symbol, bucket_5m, open, high, low, close, volume, "
                         "trade_count, buy_volume, first_trade_id, last_trade_id "
                         "FROM market_data.btc_ohlcv_5m ORDER BY 1, 2, 3").fetchall()


def test_repair_gives_the_primary_back_what_landing_holds(stack, replica, shared_data):
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(shared_data / f"{DAY}.csv"), flush_rows=20_000)
    env = cli_env(stack, replica)
    assert cli(stack, env, "replicate").returncode == 0  # the replica equal to the primary
    ticks, aggregates = stack.checksums(), ohlcv(stack)

    with stack.admin() as c:  # the superuser: what a worker login could do before sql/021
        lost = sum(c.execute(q).rowcount for q in (
            "DELETE FROM market_data.btc_ticks WHERE bucket_5m = '2019-04-01 12:00+00'",
            "DELETE FROM market_data.btc_ticks WHERE bucket_5m = '2019-04-01 13:05+00' "
            "AND trade_id % 2 = 0",
            "DELETE FROM market_data.btc_ticks WHERE trade_id % 997 = 0"))
        assert c.execute("DELETE FROM market_data.btc_ohlcv_5m "
                         "WHERE bucket_5m = '2019-04-01 15:00+00'").rowcount == 1
    assert lost > 500

    r = cli(stack, env, "replicate", "--check")
    assert r.returncode == 1, r.stdout + r.stderr  # flagged, as before
    r = stack.cli("repair", "--check", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    found = json.loads(r.stdout)
    short = found["before"]["short"]
    assert any("2019-04-01T12:00" in s and ": 0 of " in s for s in short), short
    assert any("2019-04-01T15:00" in s and "aggregate row missing" in s for s in short), short
    assert stack.checksums() != ticks  # --check changes nothing

    r = stack.cli("repair", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    done = json.loads(r.stdout)
    assert done["rows_inserted"] == lost and done["after"]["short"] == []
    assert stack.checksums() == ticks
    assert ohlcv(stack) == aggregates
    r = cli(stack, env, "replicate", "--check", "--json")
    assert r.returncode == 0, r.stdout + r.stderr  # digests equal on both servers
    assert json.loads(r.stdout)["differing"] == []

    again = stack.cli("repair", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["changed"] is False  # idempotent

    # Retention removes the day on purpose (through its chunk functions): not a loss.
    with stack.admin() as c:
        c.execute("UPDATE ops.retention_jobs SET policy = '{\"drop_after\": \"1 day\"}' "
                  "WHERE job_name = 'btc_ticks'")
    r = stack.cli("retention", "--job", "btc_ticks")
    assert r.returncode == 0, r.stdout + r.stderr
    with stack.admin() as c:
        assert c.execute("SELECT count(*) FROM market_data.btc_ticks").fetchone()[0] == 0
    r = stack.cli("repair", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    after_retention = json.loads(r.stdout)
    assert after_retention["changed"] is False and after_retention["before"]["short"] == []
    assert after_retention["before"]["retained"] == len(ticks)
