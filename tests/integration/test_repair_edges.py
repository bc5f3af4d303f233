"""`workers repair` at its edges (issue 27, item 8; adversarial review): a bucket whose landing
object is gone too, `--since`, and rows deleted inside a compressed chunk. Real servers."""

from __future__ import annotations

import json

import pytest

from tests.integration.pipeline import Stack
from workers.db.ingest import ingest_file

DAY = "BTCUSDT-trades-2019-04-01"


@pytest.fixture
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


def _load_day(stack: Stack, shared_data) -> None:
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(shared_data / f"{DAY}.csv"), flush_rows=20_000)


def test_a_bucket_whose_landing_object_is_also_gone_is_named_and_the_rest_repaired(
        stack, shared_data):
    _load_day(stack, shared_data)
    ticks = stack.checksums()
    with stack.admin() as c:
        c.execute("DELETE FROM market_data.btc_ticks WHERE bucket_5m IN "
                  "('2019-04-01 12:00+00', '2019-04-01 13:00+00')")
        uri = c.execute("SELECT s3_uri FROM landing.raw_blobs_5m "
                        "WHERE bucket_5m = '2019-04-01 12:00+00'").fetchone()[0]
    key = stack.landing().key_of(uri)
    for v in stack.s3.list_object_versions(Bucket=stack.bucket, Prefix=key)["Versions"]:
        stack.s3.delete_object(Bucket=stack.bucket, Key=key, VersionId=v["VersionId"])
    r = stack.cli("repair", "--check")  # --check already says what a repair cannot do
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cannot repair: spot BTCUSDT 2019-04-01T12:00" in r.stdout, r.stdout
    assert key in r.stdout and "missing from landing" in r.stdout, r.stdout
    r = stack.cli("repair", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert key in r.stdout + r.stderr, r.stdout + r.stderr
    # The other bucket came back all the same.
    want = {b: x for b, *x in ticks}
    got = {b: x for b, *x in stack.checksums()}
    assert [b for b in want if b not in got] == [w for w in want if w.hour == 12 and
                                                 w.minute == 0]


def test_repair_since_leaves_earlier_buckets_alone(stack, shared_data):
    _load_day(stack, shared_data)
    ticks = stack.checksums()
    with stack.admin() as c:
        c.execute("DELETE FROM market_data.btc_ticks WHERE bucket_5m IN "
                  "('2019-04-01 01:00+00', '2019-04-01 20:00+00')")
    r = stack.cli("repair", "--since", "2019-04-01T12:00:00Z", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    got = {b for b, *_ in stack.checksums()}
    assert len(got) == len(ticks) - 1
    assert all(b.hour != 1 or b.minute != 0 for b in got)
    r = stack.cli("repair", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert stack.checksums() == ticks


def test_rows_deleted_in_a_compressed_chunk_come_back(stack, shared_data):
    _load_day(stack, shared_data)
    with stack.admin() as c:
        lic = c.execute("SHOW timescaledb.license").fetchone()[0]
    # `make test` installs the licensed build: anything else is a broken install, not a skip.
    assert lic == "timescale", f"timescaledb.license = {lic}: compression needs the licensed build"
    ticks = stack.checksums()
    with stack.admin() as c:
        c.execute("SELECT compress_chunk(c) FROM show_chunks('market_data.btc_ticks') c")
        c.execute("SET timescaledb.max_tuples_decompressed_per_dml_transaction = 0")
        n = c.execute("DELETE FROM market_data.btc_ticks WHERE trade_id % 101 = 0").rowcount
        c.execute("DELETE FROM market_data.btc_ticks WHERE bucket_5m = '2019-04-01 09:00+00'")
    assert n > 100
    r = stack.cli("repair", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert stack.checksums() == ticks
    again = stack.cli("repair", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False


def test_a_bucket_below_retentions_cutoff_whose_chunk_was_kept_is_still_repaired(
        stack, shared_data, tmp_path):
    """Retention drops whole 7-day chunks older than its cut-off; the chunk holding the cut-off
    stays, with days of buckets below it. Their loss is a loss, not retention's doing."""
    from tests.integration.test_ingest_round2 import rows, write

    _load_day(stack, shared_data)
    with stack.ingest_conn() as conn:  # a week earlier: a chunk retention will drop
        ingest_file(conn, stack.landing(), str(write(
            tmp_path / "BTCUSDT-trades-2019-03-20.csv",
            rows(1, 20, t0=1_553_083_200_000))))  # 2019-03-20 12:00
    with stack.admin() as c:
        c.execute("UPDATE ops.retention_jobs SET policy = jsonb_build_object('drop_after', "
                  "(now() - timestamptz '2019-04-01 18:00+00')::text) "
                  "WHERE job_name = 'btc_ticks'")
    r = stack.cli("retention", "--job", "btc_ticks")
    assert r.returncode == 0, r.stdout + r.stderr
    with stack.admin() as c:
        assert c.execute("SELECT count(*) FROM market_data.btc_ticks "
                         "WHERE bucket_5m < '2019-03-28'").fetchone()[0] == 0
        before = c.execute("SELECT count(*) FROM market_data.btc_ticks").fetchone()[0]
        lost = c.execute("DELETE FROM market_data.btc_ticks "
                         "WHERE bucket_5m = '2019-04-01 12:00+00'").rowcount
    assert lost > 0
    r = stack.cli("repair", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["rows_inserted"] == lost, d
    with stack.admin() as c:
        assert c.execute("SELECT count(*) FROM market_data.btc_ticks").fetchone()[0] == before


def test_a_short_bucket_whose_landing_object_was_overwritten_is_named(stack, shared_data):
    """The object is there but is not what the registry vouches for (overwritten outside
    tickstack: garbage here): named as unrepairable, the other short bucket repaired."""
    _load_day(stack, shared_data)
    ticks = stack.checksums()
    with stack.admin() as c:
        c.execute("DELETE FROM market_data.btc_ticks WHERE bucket_5m IN "
                  "('2019-04-01 12:00+00', '2019-04-01 13:00+00')")
        uri = c.execute("SELECT s3_uri FROM landing.raw_blobs_5m "
                        "WHERE bucket_5m = '2019-04-01 12:00+00'").fetchone()[0]
    key = stack.landing().key_of(uri)
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=b"not parquet at all")
    r = stack.cli("repair", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    d = json.loads(r.stdout)
    assert len(d["unrepairable"]) == 1 and key in d["unrepairable"][0], d
    assert len(stack.checksums()) == len(ticks) - 1
