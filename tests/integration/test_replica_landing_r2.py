"""Issue 27 review (items 3, 4): what `replicate` and the landing audit do when landing lost or
changed a registered object — report it by name, and repair everything else. Real servers.
"""

from __future__ import annotations

import json

from tests.integration.test_replica_round2 import (  # noqa: F401 (fixtures)
    day_file, env_of, replica, run, stack)
from workers.db.ingest import ingest_file


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
