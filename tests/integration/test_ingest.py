"""Ingest on real servers with the real Binance day: exact, idempotent, crash-safe, replayable."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.conftest import REPO
from tests.integration.pipeline import Stack
from workers.db.ingest import ingest_file

DAY = "BTCUSDT-trades-2019-04-01"


@pytest.fixture
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


@pytest.fixture(scope="module")
def expected(shared_data):
    """Computed independently from the CSV with the csv module and Decimal."""
    per_bucket: dict[datetime, list] = defaultdict(list)
    total_qty = Decimal(0)
    n = 0
    with open(shared_data / f"{DAY}.csv", newline="") as f:
        for row in csv.reader(f):
            tid, price, qty, t = int(row[0]), Decimal(row[1]), Decimal(row[2]), int(row[4])
            bucket = datetime.fromtimestamp((t // 300_000) * 300, UTC)
            per_bucket[bucket].append((t, tid, price, qty, row[5] == "True"))
            total_qty += qty
            n += 1
    ohlc = {}
    for b, rows in per_bucket.items():
        rows.sort()
        prices = [r[2] for r in rows]
        ohlc[b] = (rows[0][2], max(prices), min(prices), rows[-1][2], len(rows),
                   sum(r[3] for r in rows), sum(r[3] for r in rows if not r[4]))
    return {"n": n, "qty": total_qty, "ohlc": ohlc}


def test_day_file_ingests_exactly(stack, shared_data, expected):
    with stack.ingest_conn() as conn:
        s = ingest_file(conn, stack.landing(), str(shared_data / f"{DAY}.zip"))
    assert (s.rows_read, s.accepted, s.inserted) == (expected["n"],) * 3
    assert sum(s.quarantined.values()) == 0
    assert s.buckets_landed == len(expected["ohlc"])
    with stack.admin() as c:
        n, qty = c.execute("SELECT count(*), sum(quantity) FROM market_data.btc_ticks").fetchone()
        assert (n, qty) == (expected["n"], expected["qty"]) == (183355, Decimal("25421.026169"))
        got = {r[0]: r[1:] for r in c.execute(
            "SELECT bucket_5m, open, high, low, close, trade_count, volume, buy_volume "
            "FROM market_data.btc_ohlcv_5m WHERE symbol = 'BTCUSDT'")}
        assert got == expected["ohlc"]
        reg = c.execute("SELECT count(*), sum((metadata->>'row_count')::int), "
                        "bool_and(s3_uri LIKE 's3://%%/raw/spot/BTCUSDT/2019-04-01/%%.parquet') "
                        "FROM landing.raw_blobs_5m").fetchone()
        assert reg == (len(expected["ohlc"]), expected["n"], True)
        off = c.execute("SELECT source, last_trade_id FROM ingestion.stream_offsets").fetchall()
        assert off == [(f"file:{DAY}.zip", 109527422)]
    # The registry's SHA-256 is the landing object's.
    key = "raw/spot/BTCUSDT/2019-04-01/0000.parquet"
    digest = stack.landing().read(key)[1]
    assert [r[2] for r in stack.registry() if r[1].hour == 0 and r[1].minute == 0] == [digest]


def test_ingest_twice_and_overlapping_slice_change_nothing(stack, shared_data, tmp_path):
    day_csv = shared_data / f"{DAY}.csv"
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(shared_data / f"{DAY}.zip"))
    before = stack.state()
    versions_before = len(stack.s3.list_object_versions(Bucket=stack.bucket,
                                                        Prefix="raw/")["Versions"])
    with stack.ingest_conn() as conn:
        again = ingest_file(conn, stack.landing(), str(shared_data / f"{DAY}.zip"))
    assert again.inserted == 0 and again.buckets_landed == 0
    # An overlapping slice (lines 50,000-60,000) as a separate plain CSV.
    lines = day_csv.read_text().splitlines(keepends=True)[50_000:60_000]
    part = tmp_path / f"{DAY}-part.csv"
    part.write_text("".join(lines))
    with stack.ingest_conn() as conn:
        sl = ingest_file(conn, stack.landing(), str(part), symbol="BTCUSDT")
    assert sl.inserted == 0 and sl.duplicates == 10_000
    assert stack.state() == before
    versions_after = len(stack.s3.list_object_versions(Bucket=stack.bucket,
                                                       Prefix="raw/")["Versions"])
    assert versions_after == versions_before  # nothing rewritten


def test_split_file_merges_buckets_and_keeps_versions(stack, shared_data, tmp_path):
    """Two halves cut mid-bucket: the second merges into the first's objects (union)."""
    lines = (shared_data / f"{DAY}.csv").read_text().splitlines(keepends=True)
    a, b = tmp_path / "BTCUSDT-trades-a.csv", tmp_path / "BTCUSDT-trades-b.csv"
    a.write_text("".join(lines[:90_123]))
    b.write_text("".join(lines[90_000:]))  # overlaps by 123 rows
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(a))
        sb = ingest_file(conn, stack.landing(), str(b))
    assert sb.duplicates == 123
    whole = Stack(stack.env)
    try:
        with whole.ingest_conn() as conn:
            ingest_file(conn, whole.landing(), str(shared_data / f"{DAY}.csv"))
        assert stack.checksums() == whole.checksums()
        assert stack.ohlcv() == whole.ohlcv()
        assert [r[2:] for r in stack.registry()] == [r[2:] for r in whole.registry()]
    finally:
        whole.close()
    # The bucket cut in two was rewritten: its first version is still there.
    cut = [v for v in stack.s3.list_object_versions(Bucket=stack.bucket, Prefix="raw/")
           ["Versions"]]
    assert len(cut) == len(stack.registry()) + 1


def test_landing_replay_into_empty_database_is_identical(stack, local_env, shared_data):
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(shared_data / f"{DAY}.zip"))
    fresh = Stack(local_env)
    try:
        # Same landing bucket, empty database: replay checks each object's stored SHA-256.
        fresh.s3.delete_bucket(Bucket=fresh.bucket)
        fresh.bucket = stack.bucket
        r = fresh.cli("ingest", f"s3://{stack.bucket}/raw/spot/BTCUSDT/", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["inserted"] == 183355
        assert fresh.checksums() == stack.checksums()
        assert fresh.ohlcv() == stack.ohlcv()
        assert [r[1:4] for r in fresh.registry()] == [r[1:4] for r in stack.registry()]
        # A replay over a complete database inserts nothing.
        r = fresh.cli("ingest", "--from-landing", "--since", "2019-04-01T12:00:00Z", "--json")
        assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["inserted"] == 0
    finally:
        fresh.close()


def test_replay_refuses_a_tampered_object(stack, shared_data):
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(shared_data / f"{DAY}.zip"))
    key = "raw/spot/BTCUSDT/2019-04-01/1200.parquet"
    other = stack.s3.get_object(Bucket=stack.bucket, Key="raw/spot/BTCUSDT/2019-04-01/1205.parquet")
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=other["Body"].read(),
                        Metadata=other["Metadata"])
    r = stack.cli("ingest", f"s3://{stack.bucket}/raw/spot/BTCUSDT/2019-04-01/")
    assert r.returncode == 2
    assert "1200.parquet" in r.stderr and "SHA-256 mismatch" in r.stderr


def test_kill_9_mid_file_then_rerun_is_exact(stack, local_env, shared_data):
    clean = Stack(local_env)
    try:
        with clean.ingest_conn() as conn:
            ingest_file(conn, clean.landing(), str(shared_data / f"{DAY}.csv"))
        env = {**stack.cli_env(), "TICKSTACK_INGEST_FLUSH_ROWS": "5000"}  # ~35 commits
        p = subprocess.Popen([sys.executable, "-m", "workers", "ingest",
                              str(shared_data / f"{DAY}.csv")], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline and p.poll() is None:
            with stack.admin() as c:
                n = c.execute("SELECT count(*) FROM market_data.btc_ticks").fetchone()[0]
            if n > 0:
                break
            time.sleep(0.05)
        assert p.poll() is None, "the ingest finished before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        assert 0 < stack.checksums().__len__() < len(clean.checksums())
        r = stack.cli("ingest", str(shared_data / f"{DAY}.csv"))
        assert r.returncode == 0, r.stderr
        assert stack.state() == clean.state()
    finally:
        clean.close()


def test_an_object_changed_behind_the_locks_fails_the_ingest_with_its_name(stack, shared_data,
                                                                           tmp_path):
    """A writer outside tickstack's bucket locks overwrites a landing object right after the
    ingest stored it: the check after the commit (on the loading thread) finds another ETag
    and the ingest fails naming the object; a rerun reconciles (the registry again describes
    the object in landing)."""
    from workers.core.errors import Failed
    from workers.landing.store import Landing

    lines = (shared_data / f"{DAY}.csv").read_text().splitlines(keepends=True)[:60_000]
    part = tmp_path / f"{DAY}-head.csv"
    part.write_text("".join(lines))
    hit: list[str] = []

    class Intruded(Landing):
        def write(self, key, table, symbol, **kw):
            out = super().write(key, table, symbol, **kw)
            if not hit and key.endswith("/0100.parquet"):  # one object, once
                hit.append(key)  # a valid object, one trade short: another writer's idea
                super().write(key, table.slice(1), symbol, **{k: v for k, v in kw.items()
                                                              if k == "market"})
            return out

    with stack.ingest_conn() as conn, pytest.raises(Failed) as e:
        ingest_file(conn, Intruded(stack.s3, stack.bucket), str(part), symbol="BTCUSDT")
    assert hit and hit[0] in str(e.value) and "changed after this ingest" in str(e.value)
    with stack.ingest_conn() as conn:
        again = ingest_file(conn, stack.landing(), str(part), symbol="BTCUSDT")
    assert again.buckets_landed >= 1
    landing = stack.landing()
    stored = landing.read(hit[0])
    registered = {b.strftime("%H%M"): sha for _, b, sha, *_ in stack.registry()}
    assert registered["0100"] == stored.sha256
    assert stored.table.num_rows == sum(1 for ln in lines if _hhmm(ln) == "0100")


def _hhmm(line: str) -> str:
    """The 5-minute bucket (HHMM, UTC) of one spot trade line (time in ms, 5th column)."""
    ms = int(line.split(",")[4])
    t = datetime.fromtimestamp(ms / 1000, UTC)
    return f"{t:%H}{t.minute - t.minute % 5:02d}"
