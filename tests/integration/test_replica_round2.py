"""Issue 27 (item 3, 11a, 11b): `replicate` compares and repairs everything the replica holds —
ticks, registry rows, OHLCV bars, offsets — tells writes in flight from differences, and does not
count (or bring back) what retention dropped on one side. Real servers, real processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import psycopg
import pytest

from tests.conftest import REPO
from tests.integration.pipeline import Stack
from tests.integration.test_replica import DAY, Replica
from tests.integration.test_replica import cli_env as replica_env
from workers.core.ticks import BUCKET_US, iso, to_us
from workers.db.bucket_locks import xact_lock
from workers.db.ingest import ingest_file
from workers.db.stream_commit import commit_batch, compact_all
from workers.landing.parts import write_part
from workers.sources.binance_stream import trades_table

# A small dual-write delivery bound for these tests: (1 + 1) x 2 s + 1 s = 5 s of settling.
FAST = {"TICKSTACK_REPLICA_TIMEOUT_SECONDS": "1", "TICKSTACK_REPLICA_QUEUE": "1"}
REGISTRY = ("SELECT market, asset, bucket_5m, s3_uri, object_size_bytes, ingested_tick_span, "
            "metadata FROM landing.raw_blobs_5m ORDER BY 1, 2, 3")
OHLCV = ("SELECT market, symbol, bucket_5m, open, high, low, close, volume, quote_volume, "
         "trade_count, buy_volume, first_trade_id, last_trade_id FROM market_data.btc_ohlcv_5m "
         "ORDER BY 1, 2, 3")
TICKS = ("SELECT market, symbol, bucket_5m, count(*), sum(quantity), sum(trade_id) "
         "FROM market_data.btc_ticks GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")


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


def env_of(stack: Stack, replica: Replica) -> dict[str, str]:
    c, name = replica.db.cluster, replica.db.name
    return {**stack.cli_env(), **replica_env(stack, replica), **FAST,
            "TICKSTACK_REPLICA_RETENTION_DSN": c.dsn(name, user="retention_worker")}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "workers", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def rows_of(conn: psycopg.Connection, sql: str) -> list[tuple]:
    conn.execute("SET TimeZone = 'UTC'")
    return conn.execute(sql).fetchall()


def same_everywhere(stack: Stack, replica: Replica) -> None:
    with stack.admin() as p, replica.db.connect() as r:
        for sql in (REGISTRY, OHLCV, TICKS):
            assert rows_of(r, sql) == rows_of(p, sql), sql.split(" FROM ")[1][:40]


def day_file(shared_data, tmp_path, days: int, lines: int, name: str = DAY):
    """The real day's first `lines` trades, moved `days` days on (ids moved too)."""
    src = (shared_data / f"{DAY}.csv").read_text().splitlines()[:lines]
    d = tmp_path / f"d{days}-{lines}"
    d.mkdir(exist_ok=True)
    f = d / f"{name}.csv"
    f.write_text("".join(f"{int(c[0]) + days * 10**7},{','.join(c[1:4])},"
                         f"{int(c[4]) + days * 86_400_000},{','.join(c[5:])}\n"
                         for c in (ln.split(",") for ln in src)))
    return f


# --- item 3: registry rows and OHLCV bars are compared and repaired -------------------------

def test_check_finds_and_replicate_repairs_registry_rows_and_ohlcv_bars(stack, replica,
                                                                        shared_data,
                                                                        tmp_path):
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(day_file(shared_data, tmp_path, 0, 20_000)))
    env = env_of(stack, replica)
    assert run(env, "replicate").returncode == 0
    same_everywhere(stack, replica)
    with replica.db.connect() as c:  # what a primary-only writer leaves, and plain damage
        b = [r[0] for r in c.execute("SELECT bucket_5m FROM landing.raw_blobs_5m ORDER BY 1")]
        c.execute("DELETE FROM market_data.btc_ohlcv_5m WHERE bucket_5m = %s", [b[1]])
        c.execute("UPDATE market_data.btc_ohlcv_5m SET close = high WHERE bucket_5m = %s "
                  "AND close <> high", [b[2]])
        c.execute("UPDATE market_data.btc_ohlcv_5m SET quote_volume = quote_volume + 1 "
                  "WHERE bucket_5m = %s", [b[3]])
        c.execute("DELETE FROM landing.raw_blobs_5m WHERE bucket_5m = %s", [b[4]])
        c.execute("UPDATE landing.raw_blobs_5m SET object_size_bytes = object_size_bytes + 1 "
                  "WHERE bucket_5m = %s", [b[5]])
        c.execute("UPDATE landing.raw_blobs_5m SET metadata = metadata || '{\"row_count\": 1}' "
                  "WHERE bucket_5m = %s", [b[6]])
    r = run(env, "replicate", "--check", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    d = json.loads(r.stdout)
    kinds = d["before"]["kinds"]
    assert kinds["ohlcv"] == {"missing": 1, "different": 2, "extra": 0, "retention": 0}
    assert kinds["registry"] == {"missing": 1, "different": 2, "extra": 0, "retention": 0}
    assert kinds["ticks"]["missing"] + kinds["ticks"]["different"] == 0
    said = " | ".join(d["differing"])
    assert len(d["differing"]) == 6, said
    assert "OHLCV bar missing on the replica" in said and "OHLCV bar differs" in said
    assert "registry row missing on the replica" in said and "registry row differs" in said
    text = run(env, "replicate", "--check")
    assert text.returncode == 1 and "OHLCV bars 3" in text.stdout, text.stdout
    r = run(env, "replicate", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["caught_up"] == 6 and d["differing"] == []
    assert d["repaired"] == {"ticks": 0, "registry": 3, "ohlcv": 3}
    same_everywhere(stack, replica)
    assert run(env, "replicate", "--check").returncode == 0


def test_replica_left_behind_by_restores_compaction_is_found_and_repaired(stack, replica,
                                                                          shared_data):
    """The stream dual-writes ticks; its closed buckets are compacted by `restore`
    (compact_all) on the primary only, which registers them and writes their bars there: the
    replica lacks both. And the last bucket, still open on the primary, has a registry row and
    a bar on the replica (a compaction the primary's point-in-time restore rolled back)."""
    lines = (shared_data / f"{DAY}.csv").read_text().splitlines()[:3_000]
    cols = [ln.split(",") for ln in lines]
    table = trades_table([int(c[0]) for c in cols], [c[1] for c in cols],
                         [c[2] for c in cols], [int(c[4]) * 1000 for c in cols],
                         [c[5] == "True" for c in cols])
    times = table.column("event_time").cast("int64").to_numpy()
    buckets = sorted(int(b) for b in set(times - times % BUCKET_US))
    landing = stack.landing()
    env = env_of(stack, replica)
    with stack.ingest_conn() as p, psycopg.connect(replica.dsn(), autocommit=True) as r:
        for b in buckets:
            part = table.filter((times >= b) & (times < b + BUCKET_US))
            write_part(landing, "spot", "BTCUSDT", b, part)
            for conn in (p, r):  # the primary, then the same batch dual-written
                commit_batch(conn, "spot", "BTCUSDT", "stream:binance", part, [])
        assert run(env, "replicate", "--check").returncode == 0  # ticks equal, no registry yet
        # What `workers restore` does (primary only), the last bucket left open.
        assert compact_all(p, landing, before_us=buckets[-1]) == len(buckets) - 1
    last = datetime.fromtimestamp(buckets[-1] / 1e6, UTC)
    with replica.db.connect() as c:
        assert c.execute("SELECT count(*) FROM landing.raw_blobs_5m").fetchone() == (0,)
        c.execute("INSERT INTO landing.raw_blobs_5m (market, asset, bucket_5m, s3_uri, "
                  "object_size_bytes, ingested_tick_span, metadata) VALUES ('spot', 'BTCUSDT', "
                  "%s, 's3://gone/raw/x.parquet', 10, tstzrange(%s, %s, '[]'), "
                  "jsonb_build_object('sha256', repeat('a', 64), 'row_count', 1, "
                  "'schema_version', 2, 'producer', 'x'))", [last, last, last])
        c.execute("INSERT INTO market_data.btc_ohlcv_5m (market, symbol, bucket_5m, open, high, "
                  "low, close, volume, quote_volume, trade_count, buy_volume, first_trade_id, "
                  "last_trade_id) VALUES ('spot', 'BTCUSDT', %s, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1)",
                  [last])
    n = len(buckets) - 1
    r = run(env, "replicate", "--check", "--json")
    assert r.returncode == 1, r.stdout
    d = json.loads(r.stdout)
    kinds = d["before"]["kinds"]
    assert kinds["registry"] == {"missing": n, "different": 0, "extra": 1, "retention": 0}
    assert kinds["ohlcv"] == {"missing": n, "different": 0, "extra": 1, "retention": 0}
    assert sum(x.endswith("registry row missing on the replica; OHLCV bar missing on the "
                          "replica") for x in d["differing"]) == n
    assert [x for x in d["differing"] if x.endswith(
        "registry row only on the replica; OHLCV bar only on the replica")] == [
        f"spot BTCUSDT {iso(buckets[-1])}: registry row only on the replica; OHLCV bar only "
        "on the replica"]
    r = run(env, "replicate", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["repaired"] == {"ticks": 0, "registry": n + 1, "ohlcv": n + 1}
    same_everywhere(stack, replica)


# --- 11a: --check while writers run ----------------------------------------------------------

def test_check_during_concurrent_writers_reports_only_the_true_difference(stack, replica,
                                                                          shared_data,
                                                                          tmp_path):
    # Writers and checks share the dual-write settings (the checks wait out its delivery
    # bound: (4 + 1) x 2 s + 1 s = 11 s).
    env = {**env_of(stack, replica), "TICKSTACK_INGEST_FLUSH_ROWS": "1500",
           "TICKSTACK_REPLICA_QUEUE": "4"}
    with stack.ingest_conn() as conn:  # the bucket that truly differs: a quiet, older day
        ingest_file(conn, stack.landing(), str(day_file(shared_data, tmp_path, 0, 3_000)))
    assert run(env, "replicate").returncode == 0
    with replica.db.connect() as c:
        c.execute("UPDATE market_data.btc_ticks SET quantity = quantity * 2 WHERE trade_id = "
                  "(SELECT min(trade_id) FROM market_data.btc_ticks)")
        c.execute("DELETE FROM market_data.btc_ohlcv_5m WHERE bucket_5m = "
                  "(SELECT max(bucket_5m) FROM market_data.btc_ohlcv_5m)")
        tampered = c.execute("SELECT min(bucket_5m), max(bucket_5m) FROM market_data.btc_ticks"
                             ).fetchone()
    want = sorted(f"spot BTCUSDT {iso(to_us(t))}" for t in tampered)
    during = 0
    for rnd in range(3):  # each round: two ingest processes dual-writing new days, and checks
        files = [day_file(shared_data, tmp_path, 1 + 2 * rnd + k, 40_000) for k in range(2)]
        writers = [start(env, "ingest", "--market", "spot", str(f)) for f in files]
        while True:
            running = any(w.poll() is None for w in writers)
            r = run(env, "replicate", "--check", "--json")
            assert r.returncode == 1, r.stdout + r.stderr
            d = json.loads(r.stdout)
            # The injected differences, always; besides them only buckets the dual-write gave
            # up on (recorded as lag: the replica does miss them until `replicate`).
            got = {x.split(": ")[0]: x for x in d["differing"]}
            assert set(want) <= set(got), (rnd, d["differing"])
            others = [x for k, x in got.items() if k not in want]
            assert all(x.endswith("(recorded as replica lag)") for x in others), (
                rnd, others, d.get("in_flight"))
            if not running:
                break
            during += 1
        for w in writers:
            rc, out, err = finish(w)
            assert rc == 0, out + err
    assert during >= 3  # checks that ran while writers were writing
    r = run(env, "replicate", "--json")  # the true differences are repaired; all equal
    assert r.returncode == 0, r.stdout + r.stderr
    same_everywhere(stack, replica)


# --- 11b: retention x replicate -----------------------------------------------------------

def _policy(stack: Stack, replica: Replica, drop_before: datetime | None) -> None:
    """The ticks job on both servers: drop what is older than `drop_before` (None: keep all
    but what is 99 years old)."""
    for conn in (stack.admin(), replica.db.connect()):
        with conn:
            conn.execute(
                "UPDATE ops.retention_jobs SET policy = jsonb_build_object('drop_after', "
                "CASE WHEN %s::timestamptz IS NULL THEN '99 years' ELSE "
                "(extract(epoch FROM now() - %s::timestamptz)::bigint)::text || ' seconds' END)"
                " WHERE job_name = 'btc_ticks'", [drop_before, drop_before])


def _wait_for_lock_waiter(stack: Stack, proc: subprocess.Popen[str]) -> None:
    with stack.admin() as c:
        while proc.poll() is None:
            if c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                         "AND NOT granted AND database = (SELECT oid FROM pg_database "
                         "WHERE datname = current_database())").fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError(f"replicate ended before reaching the held bucket: {finish(proc)}")


def test_retention_dropping_a_day_while_replicate_rebuilds_it(stack, replica, shared_data,
                                                             tmp_path):
    # Three days in three 7-day chunks; retention will drop the first (before 2019-04-05).
    files = [day_file(shared_data, tmp_path, k, 6_000) for k in (0, 7, 14)]
    day_a = datetime(2019, 4, 1, tzinfo=UTC)
    cut = datetime(2019, 4, 5, tzinfo=UTC)
    env = env_of(stack, replica)
    for rnd in range(3):
        with stack.ingest_conn() as conn:  # the primary holds all three days again
            for f in files:
                ingest_file(conn, stack.landing(), str(f), force=True)
        _policy(stack, replica, None)
        assert run(env, "retention").returncode == 0  # where retention stands: nothing cut
        with replica.db.connect() as c:  # the replica lags behind every bucket
            for t in ("market_data.btc_ticks", "landing.raw_blobs_5m",
                      "market_data.btc_ohlcv_5m"):
                c.execute(f"DELETE FROM {t}")
        if rnd == 0:
            # Forced interleaving: replicate has compared (day A differs) and waits for day A's
            # first bucket while retention drops day A on the primary and on the replica.
            with stack.ingest_conn() as holder, holder.transaction():
                xact_lock(holder, [("spot", "BTCUSDT", int(day_a.timestamp() * 1e6))])
                rep = start(env, "replicate", "--json")
                _wait_for_lock_waiter(stack, rep)
                _policy(stack, replica, cut)
                ret = run(env, "retention", "--json")
                assert ret.returncode == 0, ret.stdout + ret.stderr
            rc, out, err = finish(rep)
        else:  # both at once, free-running
            _policy(stack, replica, cut)
            rep = start(env, "replicate", "--json")
            ret = start(env, "retention", "--json")
            rc, out, err = finish(rep)
            rrc, rout, rerr = finish(ret)
            assert rrc == 0, rout + rerr
        assert rc == 0, (rnd, out, err)
        d = json.loads(out)
        assert d["differing"] == [], (rnd, d["differing"])
        with stack.admin() as c:
            assert c.execute("SELECT count(*) FROM market_data.btc_ticks WHERE bucket_5m < %s",
                             [cut]).fetchone() == (0,)
        r = run(env, "replicate", "--check", "--json")
        assert r.returncode == 0, (rnd, r.stdout, r.stderr)
        assert json.loads(r.stdout)["after"]["buckets"] > 0
        # Retention on the replica again: both servers hold exactly the same.
        assert run(env, "retention").returncode == 0
        with stack.admin() as p, replica.db.connect() as rr:
            assert rows_of(rr, TICKS) == rows_of(p, TICKS)
