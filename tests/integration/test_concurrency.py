"""Several writers of the same landing buckets at once, as real processes, many rounds.

Landing is the source of truth: whatever runs at once — two or four `workers ingest` of files
that cover the same buckets, a live stream and a file ingest of the same trades — every bucket
object must end as the union of all of them, its registry row must describe exactly that object
(checksum, row count), and ticks and aggregates must follow it. Each round compares the final
state with a serial ingest of the same rows into a fresh database.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.integration.pipeline import Stack
from tests.integration.wsreplay import ReplayServer, trade_messages, trades_of
from workers.db.ingest import ingest_file
from workers.db.stream_commit import compact_all

DAY = "BTCUSDT-trades-2019-04-01"
TWO_HOURS_MS = 1_554_076_800_000 + 2 * 3_600_000


@pytest.fixture(scope="module")
def morning(shared_data) -> list[str]:
    """The first two hours of the real day (24 buckets, ~20k trades), as lines."""
    out = []
    with (shared_data / f"{DAY}.csv").open() as f:
        for line in f:
            if int(line.split(",")[4]) >= TWO_HOURS_MS:
                break
            out.append(line)
    return out


def split(lines: list[str], n: int, tmp: Path) -> list[Path]:
    """n files that each hold every n-th line: all of them cover every bucket."""
    paths = []
    for k in range(n):
        d = tmp / f"part{k}"
        d.mkdir(parents=True)
        p = d / f"{DAY}.csv"
        p.write_text("".join(lines[k::n]))
        paths.append(p)
    return paths


def start_ingest(stack: Stack, path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workers", "ingest", str(path), "--json"],
                            cwd=REPO, env=stack.cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def landed(stack: Stack) -> dict[tuple, tuple[str, int, list[int]]]:
    """(market, symbol, bucket) -> (sha256 of the object, rows, trade ids) of what the registry
    points at, read straight from S3."""
    import hashlib

    out = {}
    with stack.admin() as c:
        reg = c.execute("SELECT market, asset, bucket_5m, s3_uri, metadata->>'sha256', "
                        "(metadata->>'row_count')::int FROM landing.raw_blobs_5m").fetchall()
    for market, asset, bucket, uri, sha, rows in reg:
        key = uri.split("/", 3)[3]
        body = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        assert digest == sha, f"registry {sha} describes another object than {key} ({digest})"
        table = pq.read_table(io.BytesIO(body))
        assert table.num_rows == rows, (key, rows, table.num_rows)
        out[(market, asset, bucket)] = (sha, rows, sorted(table.column("trade_id").to_pylist()))
    return out


def assert_consistent(stack: Stack, expected_ids: set[int]) -> None:
    """Landing holds every trade once; registry, ticks and aggregates follow the objects."""
    objects = landed(stack)
    ids = [i for _, _, obj in objects.values() for i in obj]
    assert len(ids) == len(set(ids)) == len(expected_ids), (len(ids), len(expected_ids))
    assert set(ids) == expected_ids
    with stack.admin() as c:
        ticks = dict(((m, s, b), n) for m, s, b, n in c.execute(
            "SELECT market, symbol, bucket_5m, count(*) FROM market_data.btc_ticks "
            "GROUP BY 1, 2, 3"))
        ohlcv = dict(((m, s, b), n) for m, s, b, n in c.execute(
            "SELECT market, symbol, bucket_5m, trade_count FROM market_data.btc_ohlcv_5m"))
    assert ticks == {k: v[1] for k, v in objects.items()}
    assert ohlcv == {k: v[1] for k, v in objects.items()}


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_file_ingests_of_the_same_buckets_lose_nothing(local_env, morning, tmp_path,
                                                                   writers):
    expected = {int(line.split(",")[0]) for line in morning}
    reference = Stack(local_env)
    try:
        with reference.ingest_conn() as conn:
            p = tmp_path / "whole" / f"{DAY}.csv"
            p.parent.mkdir()
            p.write_text("".join(morning))
            ingest_file(conn, reference.landing(), str(p))
        ref_checksums, ref_ohlcv = reference.checksums(), reference.ohlcv()
    finally:
        reference.close()
    for rnd in range(3):
        stack = Stack(local_env)
        try:
            files = split(morning, writers, tmp_path / f"r{rnd}")
            procs = [start_ingest(stack, f) for f in files]
            outs = [p.communicate(timeout=600) for p in procs]
            for p, (_out, err) in zip(procs, outs, strict=True):
                assert p.returncode == 0, err[-3000:]
            inserted = sum(json.loads(o.strip().splitlines()[-1])["inserted"] for o, _ in outs)
            assert inserted == len(expected)  # every row went in once, by one of them
            assert_consistent(stack, expected)
            assert stack.checksums() == ref_checksums
            assert stack.ohlcv() == ref_ohlcv
        finally:
            stack.close()


def spot_dump(trades: list[dict], path: Path) -> Path:
    """The recorded stream's trades as a Binance spot dump (the same trades, from a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{d['t']},{d['p']},{d['q']},{float(d['p']) * float(d['q']):.8f},{d['T']},"
             f"{'True' if d['m'] else 'False'},True" for d in trades]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_stream_and_a_file_ingest_of_the_same_trades_at_once(local_env, tmp_path):
    msgs = trade_messages()
    trades = trades_of(msgs)
    expected = {d["t"] for d in trades}
    env = {"TICKSTACK_STREAM_BATCH_ROWS": "300", "TICKSTACK_STREAM_BATCH_SECONDS": "0.1",
           "TICKSTACK_STREAM_GRACE_SECONDS": "0", "TICKSTACK_HEALTH_HOST": "127.0.0.1",
           "TICKSTACK_HEALTH_PORT": "0"}
    for rnd in range(3):
        stack = Stack(local_env)
        try:
            dump = spot_dump(trades[rnd::2] + trades[1 - rnd::3],
                             tmp_path / f"r{rnd}" / "BTCUSDT-trades-2024-08-08.csv")
            with ReplayServer(msgs) as srv:
                stream = subprocess.Popen(
                    [sys.executable, "-m", "workers", "stream", "--url", srv.url,
                     "--market", "spot"], cwd=REPO, env={**stack.cli_env(), **env},
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                files = start_ingest(stack, dump)
                out, err = files.communicate(timeout=600)
                assert files.returncode == 0, err[-3000:]
                last = max(expected)
                end = time.monotonic() + 180  # until the stream has accepted the last trade
                while time.monotonic() < end and stream_offset(stack) != last:
                    assert stream.poll() is None, stream.stderr.read()[-3000:]
                    time.sleep(0.2)
                assert stream_offset(stack) == last
                stream.send_signal(signal.SIGTERM)
                _, serr = stream.communicate(timeout=120)
                assert stream.returncode == 0, serr[-3000:]
            with stack.ingest_conn() as conn:
                compact_all(conn, stack.landing())  # the buckets still open when it stopped
            assert_consistent(stack, expected)
        finally:
            stack.close()


def stream_offset(stack: Stack) -> int | None:
    with stack.admin() as c:
        r = c.execute("SELECT last_trade_id FROM ingestion.stream_offsets "
                      "WHERE source = 'stream:binance'").fetchone()
    return r[0] if r else None


def test_the_lock_serialises_a_bucket_across_processes(local_env):
    """The lock itself: a second session cannot take a bucket another holds, and can once it
    is released (what keeps two writers' read-merge-write from interleaving)."""
    from workers.db.bucket_locks import SessionLocks

    stack = Stack(local_env)
    try:
        with stack.ingest_conn() as a, stack.ingest_conn() as b:
            la, lb = SessionLocks(a), SessionLocks(b)
            bucket = [("spot", "BTCUSDT", 1_554_076_800_000_000)]
            assert la.try_acquire(bucket)
            assert not lb.try_acquire(bucket)
            other = [("um", "BTCUSDT", 1_554_076_800_000_000)]  # another market: free
            assert lb.try_acquire(other)
            la.release(bucket)
            assert lb.try_acquire(bucket)
            held = Counter(r[0] for r in a.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory'"))
            assert sum(held.values()) == 2  # both of b's, none of a's
    finally:
        stack.close()
