"""The dual-write replica on real servers: best effort, lag recorded, `replicate` proves equality.

The replica is a fresh database on the session's plain PostgreSQL + pgvector cluster (same
migrations), reached through a TCP proxy that can make it look stopped, hung or frozen.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import REPO
from tests.integration.db import FreshDb
from tests.integration.pipeline import BUCKET_CHECKSUMS, Stack
from tests.integration.tcpproxy import Proxy
from workers.core.health import Metrics
from workers.db import migrate
from workers.db.ingest import ingest_file
from workers.replica.writer import ReplicaWriter

DAY = "BTCUSDT-trades-2019-04-01"


class Replica:
    """A replica database migrated by the RDS-like admin; workers reach it as their own logins
    (as in the cloud: a login that may not do what a worker needs fails here too)."""

    def __init__(self, env):
        self.env = env
        self.db = FreshDb(env, "replica")
        migrate.run(self.db.dsn, password=self.db.password,
                    logins=env.worker_logins())

    def dsn(self, port: int | None = None, user: str = "ingest_worker") -> str:
        """The dual-write's login (ingest) unless told; `port`: through a proxy."""
        c = self.db.cluster
        return make_conninfo(c.dsn(self.db.name, user=user), port=port or c.port,
                             password=self.env.secrets[user])

    def checksums(self) -> list[tuple]:
        with self.db.connect() as c:
            return c.execute(BUCKET_CHECKSUMS).fetchall()

    def ohlcv(self) -> list[tuple]:
        with self.db.connect() as c:
            return c.execute("SELECT symbol, bucket_5m, open, high, low, close, volume, "
                             "trade_count, first_trade_id, last_trade_id "
                             "FROM market_data.btc_ohlcv_5m ORDER BY 1, 2").fetchall()


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


@pytest.fixture(scope="module")
def reference(local_env, shared_data):
    """The day ingested without any replica: what the primary must hold in every case."""
    s = Stack(local_env)
    try:
        with s.ingest_conn() as conn:
            ingest_file(conn, s.landing(), str(shared_data / f"{DAY}.csv"), flush_rows=5000)
        yield s.state()
    finally:
        s.close()


def lag_dsn(stack: Stack) -> str:
    return make_conninfo(stack.db.cluster.dsn(stack.db.name, user="ingest_worker"),
                         password=stack.env.secrets["ingest_worker"])


def lag_rows(stack: Stack) -> list[tuple]:
    with stack.admin() as c:
        return c.execute("SELECT symbol, bucket_5m, failures, last_error "
                         "FROM ingestion.replica_lag ORDER BY 1, 2").fetchall()


def ohlcv(stack: Stack) -> list[tuple]:
    with stack.admin() as c:
        return c.execute("SELECT symbol, bucket_5m, open, high, low, close, volume, "
                         "trade_count, first_trade_id, last_trade_id "
                         "FROM market_data.btc_ohlcv_5m ORDER BY 1, 2").fetchall()


def cli_env(stack: Stack, replica: Replica) -> dict[str, str]:
    """The replica settings as the local environment gives them: the admin, and each worker's
    own login (replicate may delete ticks there; ingest may not)."""
    c, name = replica.db.cluster, replica.db.name
    return {"TICKSTACK_REPLICA_DSN": replica.db.dsn,
            "TICKSTACK_REPLICA_INGEST_DSN": c.dsn(name, user="ingest_worker"),
            "TICKSTACK_REPLICA_REPLICATE_DSN": c.dsn(name, user="replicate_worker")}


def cli(stack: Stack, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                          env={**stack.cli_env(), **env}, capture_output=True, text=True,
                          timeout=300)


def test_replica_down_mid_ingest_then_replicate_makes_checksums_equal(
        stack, replica, reference, shared_data):
    with Proxy(replica.db.cluster.port) as proxy:
        w = ReplicaWriter(replica.dsn(proxy.port), lag_dsn(stack), timeout=2.0,
                          failures_to_open=2, cooldown=0.3, metrics=Metrics())

        def progress(sm):  # the replica stops for the middle of the file, then comes back
            if 40_000 < sm.rows_read < 110_000:
                proxy.set("down")
            elif sm.rows_read >= 110_000:
                proxy.set("forward")

        with stack.ingest_conn() as conn:
            s = ingest_file(conn, stack.landing(), str(shared_data / f"{DAY}.csv"),
                            flush_rows=5000, replica=w, progress=progress)
        assert w.drain(30)
        w.close()
    assert s.inserted == 183_355
    assert stack.state() == reference  # the primary as if there were no replica
    assert w.stats["written"] > 0 and w.stats["error"] + w.stats["breaker_open"] > 0
    assert w.metrics.value("tickstack_replica_failures_total", reason="error") >= 1
    lag = lag_rows(stack)
    assert lag, "the missed buckets are recorded as lag"
    primary = stack.checksums()
    assert replica.checksums() != primary
    # Nothing missed silently: every bucket missing or different on the replica is recorded as
    # lag. (Not the converse: a write whose deadline fired after the replica committed it is
    # recorded too — lag over-reports, and `replicate` finds that bucket equal.)
    on_replica = set(replica.checksums())
    lag_buckets = {b for _, b, _, _ in lag}
    differing = {r[0] for r in primary if r not in on_replica}
    assert differing and differing <= lag_buckets, differing - lag_buckets

    env = cli_env(stack, replica)
    r = cli(stack, env, "replicate", "--check", "--json")
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["caught_up"] == 0 and d["differing"]
    assert replica.checksums() != primary  # --check changed nothing

    r = cli(stack, env, "replicate", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["caught_up"] >= len(lag_buckets) and d["differing"] == []
    assert d["lag_cleared"] == len(lag) and d["lag_open"] == 0
    assert replica.checksums() == primary
    assert replica.ohlcv() == ohlcv(stack)
    assert lag_rows(stack) == []
    r = cli(stack, env, "replicate", "--check")
    assert r.returncode == 0 and "all " in r.stdout, r.stdout + r.stderr
    # A second catch-up has nothing to do.
    assert json.loads(cli(stack, env, "replicate", "--json").stdout)["caught_up"] == 0


def test_replicate_repairs_a_tampered_bucket_and_reports_what_it_cannot(stack, replica,
                                                                        shared_data, tmp_path):
    part = tmp_path / f"{DAY}.csv"  # the first 20,000 trades are enough here
    part.write_text("".join((shared_data / f"{DAY}.csv").read_text().splitlines(
        keepends=True)[:20_000]))
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(part))
    env = cli_env(stack, replica)
    assert cli(stack, env, "replicate").returncode == 0
    with replica.db.connect() as c:  # same count, different content; and a foreign bucket
        c.execute("UPDATE market_data.btc_ticks SET quantity = quantity + 1 WHERE trade_id = "
                  "(SELECT min(trade_id) FROM market_data.btc_ticks)")
        c.execute("INSERT INTO market_data.btc_ticks (bucket_5m, market, symbol, trade_id, "
                  "event_time, price, quantity, quote_quantity, is_buyer_maker) VALUES "
                  "('2020-01-01', 'spot', 'BTCUSDT', 1, '2020-01-01', 1, 1, 1, true)")
    r = cli(stack, env, "replicate", "--check")
    assert r.returncode == 1
    assert "same row count (" in r.stdout and "only on the replica (1 rows)" in r.stdout
    r = cli(stack, env, "replicate", "--json")
    assert r.returncode == 1  # the foreign bucket is not in landing: reported, not invented
    d = json.loads(r.stdout)
    assert d["caught_up"] == 1
    assert [x.split(":")[0] for x in d["differing"]] == ["spot BTCUSDT 2020-01-01T00"]
    assert replica.checksums()[:-1] == stack.checksums()  # the 2020 bucket sorts last


def test_hanging_replica_opens_the_breaker_and_never_blocks_ingest(stack, replica, reference,
                                                                   shared_data):
    with Proxy(mode="hang") as hung:  # accepts connections, never answers
        m = Metrics()
        w = ReplicaWriter(make_conninfo(f"postgresql://postgres@127.0.0.1:{hung.port}/x",
                                        password="x"), lag_dsn(stack), timeout=1.0,
                          failures_to_open=2, cooldown=600, metrics=m)
        with stack.ingest_conn() as conn:
            s = ingest_file(conn, stack.landing(), str(shared_data / f"{DAY}.csv"),
                            flush_rows=5000, replica=w)
        w.close(wait=0)
    assert s.inserted == 183_355
    assert stack.state() == reference
    assert w.breaker_open and m.value("tickstack_replica_breaker_open") == 1
    assert w.stats["timeout"] >= 1 and w.stats["written"] == 0
    assert hung.accepted <= 3  # an open breaker does not retry on every batch
    # Every bucket the primary holds is recorded as missing on the replica.
    assert len(lag_rows(stack)) == len(stack.checksums())


def test_replica_that_freezes_mid_write_is_abandoned_at_the_deadline(stack, replica):
    with Proxy(replica.db.cluster.port) as proxy:
        w = ReplicaWriter(replica.dsn(proxy.port), lag_dsn(stack), timeout=1.0,
                          failures_to_open=5, cooldown=600)
        bucket = ("spot", "BTCUSDT", 1_554_076_800_000_000)
        w.submit([bucket], lambda c: c.execute("SELECT 1"))
        assert w.drain(10) and w.stats["written"] == 1
        proxy.set("freeze")  # connected, and now nothing comes back
        t0 = time.monotonic()
        w.submit([bucket], lambda c: c.execute("SELECT pg_sleep(0)"))
        assert time.monotonic() - t0 < 0.5  # submit never waits for the replica
        assert w.drain(15)
        w.close(wait=0)
    assert w.stats["timeout"] == 1
    (lag,) = lag_rows(stack)
    assert lag[0] == "BTCUSDT" and lag[3].startswith("timeout")


def test_stream_dual_writes_every_batch(stack, replica, tmp_path):
    from tests.integration.test_stream import Worker
    from tests.integration.wsreplay import ReplayServer, trade_messages

    msgs = trade_messages()
    last = json.loads(msgs[-1])["data"]["t"]
    with ReplayServer(msgs) as srv:
        w = Worker(stack, srv.url, tmp_path, TICKSTACK_REPLICA_DSN=replica.dsn())
        w.wait_offset(last)
        time.sleep(0.5)  # the last replica write runs after the primary commit
        assert w.metric("tickstack_replica_writes_total") >= 10
        assert w.stop() == 0
    assert lag_rows(stack) == []
    assert replica.checksums() == stack.checksums()
    with psycopg.connect(replica.dsn()) as c:
        assert c.execute("SELECT last_trade_id FROM ingestion.stream_offsets").fetchall() == [
            (last,)]
    r = cli(stack, cli_env(stack, replica), "replicate", "--check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_recomputes_what_changed_and_drills_into_the_day_that_differs(stack, replica,
                                                                            shared_data,
                                                                            tmp_path):
    """Issue 19: per-day digests first, buckets only of the days that differ, and only the
    buckets written since the last comparison are hashed again."""
    lines = (shared_data / f"{DAY}.csv").read_text().splitlines()[:6_000]
    days = []
    for k in range(3):  # three days: the real first hour, shifted by whole days
        d = tmp_path / f"d{k}" / f"{DAY}.csv"
        d.parent.mkdir()
        d.write_text("".join(f"{int(c[0]) + k * 10**6},{','.join(c[1:4])},"
                             f"{int(c[4]) + k * 86_400_000},{','.join(c[5:])}\n"
                             for c in (ln.split(",") for ln in lines)))
        days.append(d)
    with stack.ingest_conn() as conn:
        for d in days:
            ingest_file(conn, stack.landing(), str(d))
    env = cli_env(stack, replica)
    first = json.loads(cli(stack, env, "replicate", "--json").stdout)
    assert first["differing"] == [] and first["after"]["days"] == 3
    n_buckets = first["after"]["buckets"]
    d = json.loads(cli(stack, env, "replicate", "--check", "--json").stdout)
    assert d["differing"] == [] and d["before"]["days_differing"] == 0
    assert [d["before"]["digests_recomputed"][s]["recomputed"] for s in ("primary", "replica")
            ] == [0, 0]  # nothing written since: nothing hashed again
    # Two trades more in one bucket of the middle day, on the primary only (no dual-write).
    extra = tmp_path / "extra" / f"{DAY}.csv"
    extra.parent.mkdir()
    t = 1_554_076_800_000 + 86_400_000 + 600_500  # day 2, 00:10:00.5
    extra.write_text(f"5000000001,4100.5,0.25,1025.125,{t},True,True\n"
                     f"5000000002,4100.5,0.5,2050.25,{t + 1},False,True\n")
    with stack.ingest_conn() as conn:
        assert ingest_file(conn, stack.landing(), str(extra)).inserted == 2
    r = cli(stack, env, "replicate", "--check", "--json")
    assert r.returncode == 1
    d = json.loads(r.stdout)
    assert d["before"]["days_differing"] == 1 and d["before"]["days"] == 3
    assert [d["before"]["digests_recomputed"][s]["recomputed"] for s in ("primary", "replica")
            ] == [1, 0]
    assert len(d["differing"]) == 1 and "2019-04-02T00:10" in d["differing"][0]
    assert "rows on the primary" in d["differing"][0]
    d = json.loads(cli(stack, env, "replicate", "--json").stdout)
    assert d["caught_up"] == 1 and d["differing"] == [] and d["after"]["buckets"] == n_buckets
    assert replica.checksums() == stack.checksums()
    # The catch-up's delete-and-reload marked what it rewrote: no full rehash is owed.
    with psycopg.connect(replica.dsn(user="replicate_worker")) as c:
        assert c.execute("SELECT unmarked_change FROM market_data.tick_digest_state"
                         ).fetchone() == (False,)
