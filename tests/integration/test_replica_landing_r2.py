"""Issue 27 review (items 3, 4): what `replicate` and the landing audit do when landing lost or
changed a registered object — report it by name, and repair everything else. Real servers.
"""

from __future__ import annotations

import json

from tests.integration import test_replica_round2 as round2
from workers.db.ingest import ingest_file

stack, replica = round2.stack, round2.replica  # the fixtures
day_file, env_of, run = round2.day_file, round2.env_of, round2.run


def _setup(stack, replica, shared_data, tmp_path) -> tuple[dict, list[str]]:
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(day_file(shared_data, tmp_path, 0, 5_000)))
    env = env_of(stack, replica)
    assert run(env, "replicate").returncode == 0
    return env, sorted(stack.landing().stored("raw/"))


def _garble(stack, key: str) -> None:
    """The object's bytes replaced by others of the same size (no longer Parquet)."""
    body = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=body[:-20] + b"\0" * 20)


def test_object_replaced_by_other_bytes_is_reported_changed_not_a_crash(stack, replica,
                                                                        shared_data,
                                                                        tmp_path):
    env, keys = _setup(stack, replica, shared_data, tmp_path)
    _garble(stack, keys[0])
    uri = f"s3://{stack.bucket}/{keys[0]}"
    r = run(env, "landing", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert [c["uri"] for c in d["changed"]] == [uri] and "SHA-256" in d["changed"][0]["why"]
    r = run(env, "replicate", "--check", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert [c["uri"] for c in json.loads(r.stdout)["landing"]["changed"]] == [uri]


def test_replicate_repairs_what_landing_holds_and_names_the_buckets_it_lost(stack, replica,
                                                                          shared_data,
                                                                          tmp_path):
    env, keys = _setup(stack, replica, shared_data, tmp_path)
    with replica.db.connect() as c:  # the replica misses a tick in three buckets
        buckets = [b for (b,) in c.execute(
            "SELECT bucket_5m FROM landing.raw_blobs_5m ORDER BY 1 LIMIT 3")]
        for b in buckets:
            c.execute("DELETE FROM market_data.btc_ticks WHERE bucket_5m = %s AND trade_id = "
                      "(SELECT max(trade_id) FROM market_data.btc_ticks WHERE bucket_5m = %s)",
                      [b, b])
    _garble(stack, keys[0])  # landing changed the first bucket's object, lost the second's
    stack.s3.delete_object(Bucket=stack.bucket, Key=keys[1])
    r = run(env, "replicate", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["caught_up"] == 1 and d["repaired"]["ticks"] == 1, d  # the third: repaired
    assert len(d["unrebuilt"]) == 2, d["unrebuilt"]
    assert keys[0] in d["unrebuilt"][0] and "SHA-256 mismatch" in d["unrebuilt"][0]
    assert keys[1] in d["unrebuilt"][1] and "missing" in d["unrebuilt"][1]
    assert len(d["differing"]) == 2 and not d["landing"]["ok"]
    text = run(env, "replicate")
    assert text.returncode == 1 and "not rebuilt, landing lost it" in text.stdout, text.stdout


def test_rows_only_the_replica_holds_of_a_bucket_nothing_else_holds(stack, replica,
                                                                    shared_data, tmp_path):
    """A registry row and a bar on the replica for buckets the primary and landing hold nothing
    of are pointers and aggregates of nothing: replicate removes them. Ticks only the replica
    holds stay (they may be the last copy of those trades) and are reported."""
    env, _ = _setup(stack, replica, shared_data, tmp_path)
    with replica.db.connect() as c:
        first = c.execute("SELECT min(bucket_5m) FROM landing.raw_blobs_5m").fetchone()[0]
        c.execute("INSERT INTO landing.raw_blobs_5m (market, asset, bucket_5m, s3_uri, "
                  "object_size_bytes, ingested_tick_span, metadata) SELECT market, asset, "
                  "bucket_5m + interval '2 days', s3_uri || '.x', object_size_bytes, "
                  "tstzrange(bucket_5m + interval '2 days', bucket_5m + interval '2 days', "
                  "'[]'), metadata FROM landing.raw_blobs_5m WHERE bucket_5m = %s", [first])
        c.execute("INSERT INTO market_data.btc_ohlcv_5m (market, symbol, bucket_5m, open, "
                  "high, low, close, volume, quote_volume, trade_count, buy_volume, "
                  "first_trade_id, last_trade_id) SELECT market, symbol, bucket_5m + "
                  "interval '3 days', open, high, low, close, volume, quote_volume, "
                  "trade_count, buy_volume, first_trade_id, last_trade_id FROM "
                  "market_data.btc_ohlcv_5m WHERE bucket_5m = %s", [first])
        c.execute("INSERT INTO market_data.btc_ticks (bucket_5m, market, symbol, trade_id, "
                  "event_time, price, quantity, quote_quantity, is_buyer_maker) SELECT "
                  "bucket_5m + interval '4 days', market, symbol, trade_id, event_time + "
                  "interval '4 days', price, quantity, quote_quantity, is_buyer_maker FROM "
                  "market_data.btc_ticks WHERE bucket_5m = %s LIMIT 1", [first])
    r = run(env, "replicate", "--check", "--json")
    assert r.returncode == 1 and len(json.loads(r.stdout)["differing"]) == 3, r.stdout
    r = run(env, "replicate", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["repaired"] == {"ticks": 0, "registry": 1, "ohlcv": 1}, d
    assert [x.split(": ", 1)[1] for x in d["differing"]] == ["ticks only on the replica (1 rows)"]
    with replica.db.connect() as c:
        assert c.execute("SELECT count(*) FROM market_data.btc_ticks WHERE bucket_5m > %s "
                         "+ interval '1 day'", [first]).fetchone() == (1,)
        c.execute("DELETE FROM market_data.btc_ticks WHERE bucket_5m > %s + interval '1 day'",
                  [first])
    assert run(env, "replicate", "--check").returncode == 0


def test_same_size_change_to_an_object_registered_without_an_etag_is_seen(stack, replica,
                                                                         shared_data,
                                                                         tmp_path):
    """Rows registered before ETags were recorded (an installation upgraded in place) only had
    their size compared: other bytes of the same size went unseen. An object written again
    well after its row was (LastModified) is now read and its SHA-256 checked."""
    env, keys = _setup(stack, replica, shared_data, tmp_path)
    with stack.admin() as c:  # every row as an earlier release registered it, a day ago
        c.execute("UPDATE landing.raw_blobs_5m SET metadata = metadata - 'etag', "
                  "updated_at = updated_at - interval '1 day'")
    r = run(env, "landing", "--json")
    assert r.returncode == 0, r.stdout + r.stderr  # unchanged objects: no alarm
    _garble(stack, keys[2])
    r = run(env, "landing", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert [c["uri"] for c in d["changed"]] == [f"s3://{stack.bucket}/{keys[2]}"], d


def test_check_against_a_replica_that_stops_answering_fails_instead_of_hanging(
        stack, replica, shared_data, tmp_path):
    """A monitor's `replicate --check` whose replica freezes mid-query (connected, then
    silent: a frozen instance, a partition that keeps the peer alive) exits 1 at its deadline,
    saying so — it used to wait for hours."""
    import subprocess
    import sys
    import time

    from tests.conftest import REPO
    from tests.integration.tcpproxy import Proxy

    env, _ = _setup(stack, replica, shared_data, tmp_path)
    with Proxy(replica.db.cluster.port) as px:
        frozen = {**env, "TICKSTACK_REPLICATE_CHECK_SECONDS": "15",
                  "TICKSTACK_REPLICA_REPLICATE_DSN": replica.dsn(px.port, "replicate_worker")}
        p = subprocess.Popen([sys.executable, "-m", "workers", "replicate", "--check"],
                             cwd=REPO, env=frozen, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        # Freeze once its session is established (authenticated, in pg_stat_activity): a
        # freeze during the TLS handshake would test the connect timeout instead.
        with replica.db.connect() as c:
            while not c.execute("SELECT 1 FROM pg_stat_activity WHERE usename = "
                                "'replicate_worker' AND datname = current_database()"
                                ).fetchone():
                assert time.monotonic() - t0 < 30 and p.poll() is None, "no session came"
                time.sleep(0.01)
        px.set("freeze")  # connected; from now on nothing passes either way
        try:
            out, err = p.communicate(timeout=120)
        finally:
            p.kill()
    assert p.returncode == 1, out + err
    assert "no result within 15 s (TICKSTACK_REPLICATE_CHECK_SECONDS)" in err, err
    assert time.monotonic() - t0 < 60


def test_an_object_lost_after_retention_dropped_its_ticks_is_a_loss_and_says_why(
        stack, replica, shared_data, tmp_path):
    """Retention drops old ticks from the databases, never from landing: landing is then the
    only copy of that history (restore and the lake read it), so losing such an object is a
    loss like any other, and the re-land says why it cannot help (not 'the primary's 0 ticks
    do not give the registered bytes')."""
    from datetime import UTC, datetime

    from tests.integration.test_replica_round2 import _policy

    with stack.ingest_conn() as conn:
        for k in (0, 7):  # two days in two chunks; retention drops the first
            ingest_file(conn, stack.landing(), str(day_file(shared_data, tmp_path, k, 2_000)))
    env = env_of(stack, replica)
    assert run(env, "replicate").returncode == 0
    _policy(stack, replica, datetime(2019, 4, 5, tzinfo=UTC))
    assert run(env, "retention").returncode == 0
    key = sorted(stack.landing().stored("raw/"))[0]
    stack.s3.delete_object(Bucket=stack.bucket, Key=key)
    r = run(env, "replicate", "--check", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["landing"]["missing"] == [
        f"s3://{stack.bucket}/{key}"], r.stdout
    r = run(env, "landing", "--reland-from-primary")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "holds no ticks of 2019-04-01T00:00:00Z any more (dropped by retention" in r.stdout
