"""Re-ingesting files already loaded costs (almost) nothing, and stays exact (issue 19, goal 2).

A file is skipped when its own SHA-256 and the registry rows over the buckets it covered are
what they were when its load completed (workers/db/file_loads.py), and landing still holds
those objects. Shown here on real servers: a rerun reads nothing from landing (one LIST); a
changed file, and a bucket changed under a loaded file (lost, or grown by another writer), go
through the full path and end exactly where a clean ingest of the same rows ends; a rerun
beside a concurrent writer of the same buckets loses nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.pipeline import Stack
from tests.integration.test_concurrency import assert_consistent, start_ingest
from workers.db.ingest import ingest_file
from workers.landing.store import Landing

DAY = "BTCUSDT-trades-2019-04-01"


class CountingS3:
    """The S3 client, counting every call made through it."""

    def __init__(self, s3):
        self._s3 = s3
        self.calls: Counter = Counter()

    def __getattr__(self, name):
        attr = getattr(self._s3, name)
        if not callable(attr) or name == "exceptions":
            return attr

        def counted(*a, **kw):
            self.calls[name] += 1
            return attr(*a, **kw)

        return counted


@pytest.fixture
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


def lines_of(shared_data: Path) -> list[str]:
    return (shared_data / f"{DAY}.csv").read_text().splitlines(keepends=True)


def test_a_rerun_of_loaded_files_reads_nothing_from_landing(stack, shared_data, tmp_path):
    part = tmp_path / "b" / f"{DAY}.csv"  # a plain CSV too: its own SHA-256 is computed
    part.parent.mkdir()
    part.write_text("".join(lines_of(shared_data)[:5_000]))
    files = [shared_data / f"{DAY}.zip", part]
    with stack.ingest_conn() as conn:
        first = [ingest_file(conn, stack.landing(), str(f)) for f in files]
    assert first[0].inserted == 183_355 and first[1].duplicates == 5_000
    before = stack.state()
    s3 = CountingS3(stack.s3)
    requests: Counter = Counter()

    def count(model, **_):
        requests[model.name] += 1

    stack.s3.meta.events.register("before-call.s3", count)
    try:
        with stack.ingest_conn() as conn:
            again = [ingest_file(conn, Landing(s3, stack.bucket), str(f)) for f in files]
    finally:
        stack.s3.meta.events.unregister("before-call.s3", count)
    assert [a.files_skipped for a in again] == [1, 1]
    assert all(a.rows_read == a.inserted == a.buckets_landed == 0 for a in again)
    assert all(a.loaded_at for a in again) and "unchanged since its load" in again[0].summary()
    # Nothing read or written: one LIST per file (a LIST answers 1,000 keys), which shows that
    # landing still holds the objects the registry vouches for (issue 27, item 4).
    assert requests == {"ListObjectsV2": 2}, requests
    assert stack.state() == before
    # --force loads it anyway (reading landing), and changes nothing either.
    with stack.ingest_conn() as conn:
        forced = ingest_file(conn, Landing(s3, stack.bucket), str(files[0]), force=True)
    assert forced.files_skipped == 0 and forced.rows_read == 183_355 and forced.inserted == 0
    assert s3.calls["get_object"] > 0 and stack.state() == before


def test_a_changed_file_under_the_same_name_is_loaded_again_exactly(stack, local_env,
                                                                     shared_data, tmp_path):
    lines = lines_of(shared_data)
    f = tmp_path / f"{DAY}.csv"
    f.write_text("".join(lines[:100_000]))
    r = stack.cli("ingest", str(f), "--json")
    assert r.returncode == 0, r.stderr
    f.write_text("".join(lines))  # the publisher's corrected, complete file
    r = stack.cli("ingest", str(f), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["files_skipped"] == 0 and out["inserted"] == len(lines) - 100_000
    clean = Stack(local_env)
    try:
        with clean.ingest_conn() as conn:
            ingest_file(conn, clean.landing(), str(shared_data / f"{DAY}.csv"))
        assert stack.state() == clean.state()
    finally:
        clean.close()
    r = stack.cli("ingest", str(f), "--json")  # now the complete file is the one recorded
    assert json.loads(r.stdout.strip().splitlines()[-1])["files_skipped"] == 1


def test_a_bucket_changed_under_a_loaded_file_gets_the_full_path(stack, local_env, shared_data,
                                                                  tmp_path):
    day = shared_data / f"{DAY}.zip"
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(day))
    reference = stack.state()
    # 1. A bucket lost: its object, registry row, aggregate and ticks gone.
    key = "raw/spot/BTCUSDT/2019-04-01/1200.parquet"
    stack.s3.delete_object(Bucket=stack.bucket, Key=key)
    with stack.admin() as c:
        for t in ("landing.raw_blobs_5m", "market_data.btc_ohlcv_5m"):
            c.execute(f"DELETE FROM {t} WHERE bucket_5m = '2019-04-01 12:00+00'")
        c.execute("DELETE FROM market_data.btc_ticks WHERE bucket_5m = '2019-04-01 12:00+00'")
    with stack.ingest_conn() as conn:
        s = ingest_file(conn, stack.landing(), str(day))
    assert s.files_skipped == 0 and s.buckets_landed == 1 and s.inserted > 0
    assert stack.state() == reference
    # 2. A bucket grown by another writer (trades the day file does not have).
    extra = tmp_path / "extra" / f"{DAY}.csv"
    extra.parent.mkdir()
    extra.write_text("900000001,4100.00000000,0.01000000,41.00000000,1554120001000,True,True\n")
    with stack.ingest_conn() as conn:
        assert ingest_file(conn, stack.landing(), str(extra)).inserted == 1
        grown = stack.state()
        s = ingest_file(conn, stack.landing(), str(day))
    assert s.files_skipped == 0 and s.inserted == 0 and s.duplicates == 183_355
    assert stack.state() == grown
    with stack.ingest_conn() as conn:  # and recorded again: the next rerun is skipped
        assert ingest_file(conn, stack.landing(), str(day)).files_skipped == 1


def test_a_rerun_beside_a_writer_of_the_same_buckets_loses_nothing(local_env, shared_data,
                                                                   tmp_path):
    lines = lines_of(shared_data)[:20_000]  # the first two hours: 24 buckets
    whole = tmp_path / "whole" / f"{DAY}.csv"
    whole.parent.mkdir()
    whole.write_text("".join(lines[::2]))
    other = tmp_path / "other" / f"{DAY}.csv"
    other.parent.mkdir()
    other.write_text("".join(lines[1::2]))  # the other half of the same buckets
    expected = {int(ln.split(",")[0]) for ln in lines}
    for _ in range(2):
        stack = Stack(local_env)
        try:
            assert stack.cli("ingest", str(whole)).returncode == 0
            procs = [start_ingest(stack, whole), start_ingest(stack, other)]
            outs = [p.communicate(timeout=600) for p in procs]
            assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
            assert_consistent(stack, expected)
            # Whatever the interleaving, a rerun of both now finds nothing to do.
            for f in (whole, other):
                r = stack.cli("ingest", str(f), "--json")
                out = json.loads(r.stdout.strip().splitlines()[-1])
                assert out["inserted"] == 0 and out["buckets_landed"] == 0, out
        finally:
            stack.close()



def test_a_recomputed_bar_wrong_in_quote_volume_alone_is_corrected(stack, shared_data):
    """The aggregate upsert skips bars whose values are unchanged by comparing columns; one it
    left out (quote_volume) kept a wrong value however often the bar was recomputed — e.g.
    COIN-M bars stored before their notional was fixed."""
    from workers.core.sqlfiles import query

    r = stack.cli("ingest", str(shared_data / f"{DAY}.zip"), "--json")
    assert r.returncode == 0, r.stderr
    cols = ("market, symbol, bucket_5m, open, high, low, close, volume, quote_volume, "
            "trade_count, buy_volume, first_trade_id, last_trade_id")
    where = "WHERE bucket_5m = '2019-04-01 12:00+00'"
    with stack.admin() as c:
        right = c.execute(f"SELECT {cols} FROM market_data.btc_ohlcv_5m {where}").fetchone()
        c.execute(f"UPDATE market_data.btc_ohlcv_5m SET quote_volume = quote_volume * 2 {where}")
    with stack.ingest_conn() as conn, conn.transaction():
        conn.execute(query("workers.db", "upsert_ohlcv"), right)  # the recompute's values
    with stack.admin() as c:
        assert c.execute(f"SELECT {cols} FROM market_data.btc_ohlcv_5m {where}").fetchone() == right
