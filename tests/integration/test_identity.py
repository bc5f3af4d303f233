"""A trade's identity is (market, symbol, trade id), and every class of input that used to lose
or mix data silently: markets kept apart (files and streams), late stream trades kept,
one trade id in two buckets quarantined, unsafe symbols refused, bad bytes as bad rows, zip
bombs and oversized buckets bounded. Real servers, real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.pipeline import Stack
from tests.integration.wsreplay import WS_DIR, ReplayServer, trade_messages, trades_of
from workers.db.ingest import ingest_file

T0 = 1_554_076_800_000  # 2019-04-01 00:00:00 UTC in ms
SPOT = "BTCUSDT-trades-2019-04-01.csv"
USDM = WS_DIR / "binance-usdm-btcusdt-20240808.trades.jsonl"
STREAM_ENV = {"TICKSTACK_STREAM_BATCH_ROWS": "500", "TICKSTACK_STREAM_BATCH_SECONDS": "0.1",
              "TICKSTACK_STREAM_GRACE_SECONDS": "0", "TICKSTACK_HEALTH_HOST": "127.0.0.1",
              "TICKSTACK_HEALTH_PORT": "0"}


@pytest.fixture
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


def spot_rows(n: int, start: int = 1000, t0: int = T0, step_ms: int = 1000) -> list[str]:
    return [f"{start + i},4100.5,0.01,41.005,{t0 + i * step_ms},True,True" for i in range(n)]


def futures_rows(n: int, start: int = 1000, t0: int = T0) -> list[str]:
    return ["id,price,qty,quote_qty,time,is_buyer_maker"] + [
        f"{start + i},4150.5,0.02,83.01,{t0 + i * 1000},false" for i in range(n)]


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def count(stack: Stack, sql: str, *args):
    with stack.admin() as c:
        return c.execute(sql, args).fetchall()


def ohlcv(stack: Stack, market: str) -> list[tuple]:
    return count(stack, "SELECT symbol, bucket_5m, open, high, low, close, volume, trade_count "
                        "FROM market_data.btc_ohlcv_5m WHERE market = %s ORDER BY 1, 2", market)


def landing_keys(stack: Stack, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in stack.s3.list_objects_v2(Bucket=stack.bucket,
                                                             Prefix=prefix).get("Contents", []))


# --- markets: files --------------------------------------------------------------------------

def test_a_futures_dump_named_like_spot_is_never_merged_into_spot(stack, tmp_path):
    spot = write(tmp_path / "a" / SPOT, spot_rows(50))
    assert stack.cli("ingest", str(spot)).returncode == 0
    spot_before = ohlcv(stack, "spot")
    fut = write(tmp_path / "b" / SPOT, futures_rows(50))  # same name, same ids, other market
    r = stack.cli("ingest", str(fut))
    assert r.returncode == 2 and "pass --market um or cm" in r.stderr, r.stderr
    assert ohlcv(stack, "spot") == spot_before and ohlcv(stack, "um") == []
    # With the market named, it lands apart: its own keys, registry rows and aggregate.
    r = stack.cli("ingest", str(fut), "--market", "um", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["inserted"] == 50
    assert ohlcv(stack, "spot") == spot_before and len(ohlcv(stack, "um")) == 1
    assert count(stack, "SELECT market, count(*), sum(quantity) FROM market_data.btc_ticks "
                        "GROUP BY 1 ORDER BY 1") == [
        ("spot", 50, pytest.approx(0.5)), ("um", 50, pytest.approx(1.0))]
    assert landing_keys(stack, "raw/um/") and all(
        k.startswith(("raw/spot/", "raw/um/")) for k in landing_keys(stack, "raw/"))


def test_the_archive_path_names_the_market_and_the_columns_must_agree(stack, tmp_path):
    um_dir = tmp_path / "data" / "futures" / "um" / "daily" / "trades" / "BTCUSDT"
    fut = write(um_dir / SPOT, futures_rows(10))
    r = stack.cli("ingest", str(fut))
    assert r.returncode == 0, r.stderr
    assert count(stack, "SELECT DISTINCT market FROM market_data.btc_ticks") == [("um",)]
    spot_cols = write(um_dir / "older" / SPOT, spot_rows(10, start=50_000))  # spot columns
    r = stack.cli("ingest", str(spot_cols))
    assert r.returncode == 2 and "columns are a spot file's" in r.stderr, r.stderr
    r = stack.cli("ingest", str(fut), "--market", "spot")
    assert r.returncode == 2 and "contradicts the archive path" in r.stderr
    assert count(stack, "SELECT count(*) FROM market_data.btc_ticks") == [(10,)]


# --- markets: streams ------------------------------------------------------------------------

def run_stream(stack: Stack, messages: list[str], market: str, last_id: int,
               timeout: float = 180) -> None:
    with ReplayServer(messages) as srv:
        p = subprocess.Popen([sys.executable, "-m", "workers", "stream", "--url", srv.url,
                              "--market", market], cwd=REPO, env={**stack.cli_env(),
                                                                  **STREAM_ENV},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + timeout
        try:  # every message sent, the last trade committed, then a clean stop
            while time.monotonic() < end:
                assert p.poll() is None, p.stderr.read()[-3000:]
                got = count(stack, "SELECT last_trade_id FROM ingestion.stream_offsets "
                                   "WHERE market = %s", market)
                if srv.sent == len(messages) and got and got[0][0] == last_id:
                    break
                time.sleep(0.2)
            time.sleep(1.0)
        finally:
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-3000:]


def test_futures_then_spot_under_one_source_stores_both(stack):
    spot = trade_messages()
    um = USDM.read_text().splitlines()
    run_stream(stack, um, "um", max(d["t"] for d in trades_of(um)))
    run_stream(stack, spot, "spot", max(d["t"] for d in trades_of(spot)))
    run_stream(stack, um, "um", max(d["t"] for d in trades_of(um)))  # back to futures: no gap
    assert count(stack, "SELECT market, count(*) FROM market_data.btc_ticks GROUP BY 1 "
                        "ORDER BY 1") == [("spot", len(spot)), ("um", len(um))]
    assert count(stack, "SELECT market, count(*) FROM ingestion.stream_gaps "
                        "WHERE filled_at IS NULL GROUP BY 1") == []
    assert count(stack, "SELECT market FROM ingestion.stream_offsets ORDER BY 1") == [
        ("spot",), ("um",)]


def test_a_stream_refuses_the_other_markets_messages_and_flags_special_trades(stack):
    um = [json.loads(m) for m in USDM.read_text().splitlines()[:400]]
    special = dict(um[-1], data=dict(um[-1]["data"], t=um[-1]["data"]["t"] + 1,
                                     X="INSURANCE_FUND", p="1.00"))
    msgs = [json.dumps(m) for m in um] + [json.dumps(special)]
    # On a spot stream every futures message is the wrong market: quarantined, nothing stored.
    with ReplayServer(msgs) as srv:
        p = subprocess.Popen([sys.executable, "-m", "workers", "stream", "--url", srv.url,
                              "--market", "spot"], cwd=REPO,
                             env={**stack.cli_env(), **STREAM_ENV},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 60
        while time.monotonic() < end and srv.sent < len(msgs):
            time.sleep(0.2)
        time.sleep(1.5)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    assert count(stack, "SELECT count(*) FROM market_data.btc_ticks") == [(0,)]
    q = [k for k in landing_keys(stack, "quarantine/spot/")]
    assert q and b"futures trade" in stack.s3.get_object(Bucket=stack.bucket,
                                                        Key=q[0])["Body"].read()
    # On the USDⓈ-M stream: stored; the insurance-fund trade kept, flagged, not in the OHLCV.
    run_stream(stack, msgs, "um", special["data"]["t"])
    assert count(stack, "SELECT trade_kind, count(*) FROM market_data.btc_ticks GROUP BY 1 "
                        "ORDER BY 1 NULLS FIRST") == [(None, 400), ("INSURANCE_FUND", 1)]
    assert count(stack, "SELECT min(low) > 1 FROM market_data.btc_ohlcv_5m") in (
        [(True,)], [(None,)])


def test_a_stream_market_must_be_known(stack):
    r = stack.cli("stream", "--url", "ws://127.0.0.1:9/ws/btcusdt@trade")
    assert r.returncode == 2 and "--market spot|um|cm" in r.stderr, r.stderr
    r = stack.cli("stream", "--url", "wss://fstream.binance.com/ws/btcusdt@trade",
                  "--market", "spot")
    assert r.returncode == 2 and "contradicts the stream host" in r.stderr, r.stderr


# --- out-of-order trades on the stream -------------------------------------------------------

def test_a_late_trade_on_the_stream_is_kept_and_fills_its_gap(stack):
    msgs = trade_messages()[:2000]
    late = msgs[1000]
    reordered = msgs[:1000] + msgs[1001:1500] + [late] + msgs[1500:]  # 1001 before 1000
    ids = [d["t"] for d in trades_of(msgs)]
    run_stream(stack, reordered, "spot", max(ids))
    assert count(stack, "SELECT count(*), count(DISTINCT trade_id) FROM market_data.btc_ticks"
                 ) == [(2000, 2000)]
    r = stack.cli("stream", "--gaps", "--json", "--market", "spot")
    gaps = json.loads(r.stdout)
    assert len(gaps) == 1 and gaps[0]["filled_at"] is not None, gaps


# --- one trade id in two buckets -------------------------------------------------------------

def test_the_same_trade_id_in_another_bucket_is_quarantined(stack, tmp_path):
    first = write(tmp_path / "a" / SPOT, spot_rows(5, start=5000))  # 00:00:00 .. 00:00:04
    with stack.ingest_conn() as conn:
        ingest_file(conn, stack.landing(), str(first))
    moved = [f"5002,4100.5,0.01,41.005,{T0 + 10 * 60_000},True,True",  # 00:10: other bucket
             *spot_rows(3, start=6000, t0=T0 + 11 * 60_000)]
    with stack.ingest_conn() as conn:
        s = ingest_file(conn, stack.landing(), str(write(tmp_path / "b" / SPOT, moved)))
    assert s.inserted == 3 and s.quarantined == {
        "conflicting duplicate trade id (same id, different values)": 1}
    assert count(stack, "SELECT count(*) FROM market_data.btc_ticks WHERE trade_id = 5002") == [
        (1,)]
    # Within one file too: the second bucket's copy of an id is the conflict.
    both = spot_rows(2, start=7000) + [f"7001,4100.5,0.01,41.005,{T0 + 20 * 60_000},True,True"]
    with stack.ingest_conn() as conn:
        s = ingest_file(conn, stack.landing(), str(write(tmp_path / "c" / SPOT, both)))
    assert s.inserted == 2 and sum(s.quarantined.values()) == 1


# --- symbols -----------------------------------------------------------------------------------

@pytest.mark.parametrize("symbol", ["../ETC", "BTC/USDT", "x", "BTC\x1b[31mUSDT"])
def test_an_unsafe_symbol_is_refused_before_anything_is_written(stack, tmp_path, symbol):
    p = write(tmp_path / "prices.csv", spot_rows(5))
    r = stack.cli("ingest", str(p), "--symbol", symbol)
    assert r.returncode == 2 and "not a symbol" in r.stderr, r.stderr
    assert "\x1b" not in r.stderr  # escape bytes are shown, not sent to the terminal
    assert landing_keys(stack) == []


def test_replay_skips_and_reports_keys_it_cannot_parse(stack, tmp_path):
    p = write(tmp_path / SPOT, spot_rows(20))
    assert stack.cli("ingest", str(p)).returncode == 0
    good = landing_keys(stack, "raw/")[0]
    body = stack.s3.get_object(Bucket=stack.bucket, Key=good)["Body"].read()
    for bad in ("raw/spot/../ETC/2019-04-01/0000.parquet", "raw/spot/BTCUSDT/x/y.parquet"):
        stack.s3.put_object(Bucket=stack.bucket, Key=bad, Body=body)
    fresh = Stack(stack.env)
    try:
        fresh.s3.delete_bucket(Bucket=fresh.bucket)
        fresh.bucket = stack.bucket
        r = fresh.cli("ingest", f"s3://{stack.bucket}/raw/", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["inserted"] == 20 and len(out["skipped_keys"]) == 2
    finally:
        fresh.close()


# --- bad bytes, zip bombs, oversized buckets ------------------------------------------------

def test_invalid_utf8_is_one_bad_row_not_a_bad_file(stack, tmp_path):
    p = tmp_path / SPOT
    rows = spot_rows(300_000 // 60)  # several parse blocks
    data = ("\n".join(rows[:2500]) + "\n").encode() + b"9999,41\xff\xfe.5,0.01,1,%d,True,True\n" % (
        T0 + 2600_000) + ("\n".join(rows[2500:]) + "\n").encode()
    p.write_bytes(data)
    with stack.ingest_conn() as conn:
        s = ingest_file(conn, stack.landing(), str(p), block_bytes=64 << 10)
    assert s.inserted == len(rows) and s.quarantined == {"invalid UTF-8 bytes": 1}
    assert s.rows_read == len(rows) + 1


def test_a_zip_bomb_fails_clearly_with_memory_bounded(stack, tmp_path):
    z = tmp_path / "BTCUSDT-trades-2019-04-01.zip"
    line = f"1000,4100.5,0.01,41.005,{T0},True,True\n".encode() * 4096
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f, f.open(SPOT, "w") as w:
        for _ in range(3000):  # ~500 MB of text, a few hundred KB zipped
            w.write(line)
    # Measured in a process of its own: its children's peak RSS is the ingest's alone.
    probe = ("import json, resource, subprocess, sys; "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(json.dumps([r.returncode, r.stderr, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "workers",
                          "ingest", str(z)], cwd=REPO, env=stack.cli_env(), capture_output=True,
                         text=True, timeout=600)
    code, err, peak_kb = json.loads(out.stdout)
    assert code == 2 and "zip bomb" in err and z.name in err, err
    assert peak_kb < 300_000, peak_kb  # refused before it expands (the 300 MB goal)
    assert landing_keys(stack) == []


def test_an_oversized_bucket_is_flushed_in_parts_and_capped(stack, tmp_path):
    same_bucket = [f"{10_000 + i},4100.5,0.01,41.005,{T0 + (i % 299_000)},True,True"
                   for i in range(120_000)]
    p = write(tmp_path / SPOT, same_bucket)
    env = {"TICKSTACK_INGEST_FLUSH_ROWS": "20000"}
    r = subprocess.run([sys.executable, "-m", "workers", "ingest", str(p), "--json"], cwd=REPO,
                       env={**stack.cli_env(), **env}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["inserted"] == 120_000
    versions = stack.s3.list_object_versions(Bucket=stack.bucket, Prefix="raw/")["Versions"]
    assert len(versions) > 1  # the one bucket landed in parts, merged each time
    assert count(stack, "SELECT (metadata->>'row_count')::int FROM landing.raw_blobs_5m") == [
        (120_000,)]
    capped = write(tmp_path / "cap" / SPOT, [f"{200_000 + i},4100.5,0.01,41.005,{T0 + 400_000},"
                                             "True,True" for i in range(3000)])
    r = subprocess.run([sys.executable, "-m", "workers", "ingest", str(capped)], cwd=REPO,
                       env={**stack.cli_env(), "TICKSTACK_INGEST_MAX_BUCKET_ROWS": "1000"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "would hold 3,000 trades" in r.stderr, r.stderr


# --- smaller edges ---------------------------------------------------------------------------

def test_a_checksum_file_naming_another_file_is_refused(stack, tmp_path):
    import hashlib

    z = tmp_path / "BTCUSDT-trades-2019-04-01.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr(SPOT, "\n".join(spot_rows(5)) + "\n")
    digest = hashlib.sha256(z.read_bytes()).hexdigest()
    (tmp_path / (z.name + ".CHECKSUM")).write_text(f"{digest}  ETHUSDT-trades-2019-04-01.zip\n")
    r = stack.cli("ingest", str(z))
    assert r.returncode == 2 and "is the checksum of ETHUSDT" in r.stderr, r.stderr


def test_a_directory_given_as_a_file_is_a_usage_error(stack, tmp_path):
    d = tmp_path / SPOT
    d.mkdir()
    r = stack.cli("ingest", str(d))
    assert r.returncode == 2 and "a directory" in r.stderr and "Traceback" not in r.stderr


def test_escape_bytes_from_a_header_are_not_echoed_raw(stack, tmp_path):
    p = write(tmp_path / SPOT, ["id,\x1b]0;pwned\x07price,\x1b[2J", "1,2,3"])
    r = stack.cli("ingest", str(p))
    assert r.returncode == 2 and "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert "\\x1b" in r.stderr
