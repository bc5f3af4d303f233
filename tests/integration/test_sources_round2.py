"""Sources, round two (issue 27): aggTrades never stored as trades (files by name and by
columns, `fetch --kind aggTrades --ingest`, `@aggTrade` streams); COIN-M quantities (contracts)
and notionals (contracts × contract size) from files in Binance's layout and from the stream,
agreeing on the same trade; trades ahead of the clock quarantined as `future_time`.

Small generated files in the published layouts, the real CLI, real servers (PostgreSQL, moto S3,
a loopback archive mirror and websocket server)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zipfile
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration import archive_server as arc
from tests.integration.archive_server import ArchiveServer
from tests.integration.pipeline import Stack
from tests.integration.wsreplay import ReplayServer, trade_messages, trades_of

T0 = 1_554_076_800_000  # 2019-04-01 00:00:00 UTC, ms
T_CM = 1_723_075_200_000  # 2024-08-08 00:00:00 UTC, ms
STREAM_ENV = {"TICKSTACK_STREAM_BATCH_ROWS": "500", "TICKSTACK_STREAM_BATCH_SECONDS": "0.1",
              "TICKSTACK_STREAM_GRACE_SECONDS": "0", "TICKSTACK_HEALTH_HOST": "127.0.0.1",
              "TICKSTACK_HEALTH_PORT": "0"}
TICK_COLUMNS = "trade_id, event_time, price, quantity, quote_quantity, is_buyer_maker"


@pytest.fixture
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(stack: Stack, sql: str, *args) -> list[tuple]:
    with stack.admin() as c:
        return c.execute(sql, args).fetchall()


def landing_versions(stack: Stack) -> int:
    return len(stack.s3.list_object_versions(Bucket=stack.bucket).get("Versions", []))


def quarantined(stack: Stack, prefix: str = "quarantine/") -> list[dict]:
    out = []
    for o in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", []):
        body = stack.s3.get_object(Bucket=stack.bucket, Key=o["Key"])["Body"].read().decode()
        out += [json.loads(ln) for ln in body.splitlines() if ln.strip()]
    return out


def summary_of(r: subprocess.CompletedProcess[str]) -> dict:
    """The `ingest --json` summary (the last JSON line on stdout)."""
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def spot_trades(n: int, start: int, t0: int = T0) -> list[str]:
    return [f"{start + i},4100.5,0.01,41.005,{t0 + i * 1000},True,True" for i in range(n)]


def spot_agg(n: int, start: int, first: int) -> list[str]:
    """Spot aggTrades (no header, 8 columns); first/last trade ids of today's magnitude."""
    return [f"{start + i},4100.5,0.02,{first + 2 * i},{first + 2 * i + 1},{T0 + i * 1000},"
            f"True,True" for i in range(n)]


def futures_agg(n: int, start: int, first: int, header: bool) -> list[str]:
    """USDⓈ-M / COIN-M aggTrades (7 columns, Binance's header when `header`)."""
    head = ["agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
            "is_buyer_maker"] if header else []
    return head + [f"{start + i},4100.5,0.02,{first + 2 * i},{first + 2 * i + 1},"
                   f"{T0 + i * 1000},false" for i in range(n)]


# --- item 2: aggTrades are another dataset ----------------------------------------------------

def test_aggtrades_files_are_refused_by_name_and_by_columns(stack, tmp_path):
    day = write(tmp_path / "trades" / "BTCUSDT-trades-2019-04-01.csv", spot_trades(20, 1000))
    assert summary_of(stack.cli("ingest", str(day), "--json"))["inserted"] == 20
    before = (stack.state(), landing_versions(stack))
    big = 5_000_000_000  # trade ids of today: ten digits, like a timestamp in seconds
    cases = [  # (file, extra options): every published aggTrades shape, named or renamed
        (write(tmp_path / "a" / "BTCUSDT-aggTrades-2019-04-01.csv", spot_agg(20, 1000, 1000)),
         []),
        (write(tmp_path / "b" / "BTCUSDT-aggTrades-2019-04-01.csv",
               futures_agg(20, 1000, big, header=True)), ["--market", "um"]),
        (write(tmp_path / "c" / "BTCUSDT-trades-2019-04-01.csv", spot_agg(20, 1000, big)), []),
        (write(tmp_path / "d" / "BTCUSDT-trades-2019-04-01.csv",
               futures_agg(20, 1000, big, header=False)), ["--market", "um"]),
        (write(tmp_path / "e" / "BTCUSDT-trades-2019-04-01.csv",
               futures_agg(20, 1000, big, header=True)), ["--market", "um"]),
        (write(tmp_path / "f" / "BTCUSD_PERP-trades-2019-04-01.csv",
               futures_agg(20, 1000, big, header=True)), ["--market", "cm"]),
        # trades columns under an aggTrades name: the name and the columns disagree
        (write(tmp_path / "g" / "BTCUSDT-aggTrades-2019-04-01.csv", spot_trades(20, 1000)), []),
    ]
    for path, extra in cases:
        r = stack.cli("ingest", str(path), *extra)
        where = f"{path.parent.name}/{path.name}"
        assert r.returncode == 2, (where, r.stdout, r.stderr[-2000:])
        assert path.name in r.stderr and "aggTrades" in r.stderr, (where, r.stderr)
        assert "aggregate trades are not ingested" in r.stderr, (where, r.stderr)
        assert "Traceback" not in r.stderr
        assert (stack.state(), landing_versions(stack)) == before, where


def test_a_zip_named_as_trades_whose_csv_is_named_aggtrades_is_refused(stack, tmp_path):
    """The name inside a zip is a name too: trades' columns under an aggTrades CSV name in a
    trades-named zip were ingested (a bare CSV so named is refused)."""
    csv = ("\n".join(spot_trades(20, 1000)) + "\n").encode()
    z = tmp_path / "z" / "BTCUSDT-trades-2019-04-01.zip"
    z.parent.mkdir(parents=True)
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("BTCUSDT-aggTrades-2019-04-01.csv", csv)
    before = (stack.state(), landing_versions(stack))
    r = stack.cli("ingest", str(z))
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    assert (f"{z.name}: its CSV 'BTCUSDT-aggTrades-2019-04-01.csv' is named as an aggTrades "
            "file") in r.stderr and "aggregate trades are not ingested" in r.stderr, r.stderr
    assert (stack.state(), landing_versions(stack)) == before


def test_fetch_aggtrades_fetches_but_never_ingests(stack, tmp_path):
    root = tmp_path / "archive"
    path = arc.archive_path("daily", "BTCUSDT", "2019-04-01", kind="aggTrades")
    arc.put(root, path, ("\n".join(spot_agg(50, 1, 1)) + "\n").encode())
    cache = tmp_path / "cache"
    env = {**stack.cli_env(), "TICKSTACK_ARCHIVE_CACHE_DIR": str(cache),
           "TICKSTACK_ARCHIVE_ATTEMPTS": "2", "TICKSTACK_ARCHIVE_BACKOFF_SECONDS": "0.05"}
    args = ["fetch", "--symbol", "BTCUSDT", "--kind", "aggTrades", "--since", "2019-04-01",
            "--until", "2019-04-01"]
    with ArchiveServer(root) as server:
        env["TICKSTACK_ARCHIVE_BASE_URL"] = server.url

        def run(*more: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "workers", *args, *more], cwd=REPO,
                                  env=env, capture_output=True, text=True, timeout=120)

        r = run("--ingest")  # refused before anything is downloaded
        assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
        assert "aggTrades cannot be ingested" in r.stderr, r.stderr
        assert server.gets() == []
        r = run()  # fetching them is fine
        assert r.returncode == 0, (r.stdout, r.stderr[-2000:])
    assert (cache / path).exists()
    assert rows(stack, "SELECT count(*) FROM market_data.btc_ticks") == [(0,)]
    r = stack.cli("ingest", str(cache / path))  # the fetched file, by hand: refused too
    assert r.returncode == 2 and "aggregate trades are not ingested" in r.stderr, r.stderr
    assert rows(stack, "SELECT count(*) FROM market_data.btc_ticks") == [(0,)]


def run_stream(stack: Stack, messages: list[str], market: str, symbol: str, last_id: int,
               env: dict | None = None, timeout: float = 180) -> str:
    """Replay `messages`, wait for every one sent and `last_id` committed, SIGTERM; stderr."""
    with ReplayServer(messages) as srv:
        p = subprocess.Popen([sys.executable, "-m", "workers", "stream", "--url", srv.url,
                              "--market", market, "--symbol", symbol], cwd=REPO,
                             env={**stack.cli_env(), **STREAM_ENV, **(env or {})},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                assert p.poll() is None, p.stderr.read()[-3000:]
                got = rows(stack, "SELECT last_trade_id FROM ingestion.stream_offsets "
                                  "WHERE market = %s AND symbol = %s", market, symbol)
                if srv.sent == len(messages) and got and got[0][0] == last_id:
                    break
                time.sleep(0.2)
            time.sleep(1.0)  # what came after the last trade is handled too
        finally:
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-3000:]
    return err


def test_fetch_ingest_a_file_the_pipeline_refuses_fails_alone_and_the_others_load(stack,
                                                                                 tmp_path):
    """A verified file that ingest refuses (here a mirror's aggTrades rows under a trades name)
    ended the whole `fetch --ingest` run (exit 2): the days after it were never loaded, on every
    rerun. It is now that file's failure, named; the others load; exit 1."""
    root = tmp_path / "archive"
    days = {"2019-04-01": spot_trades(20, 1000), "2019-04-02": spot_agg(20, 2000, 2000),
            "2019-04-03": spot_trades(20, 3000, T0 + 2 * 86_400_000)}
    paths = {d: arc.archive_path("daily", "BTCUSDT", d) for d in days}
    for day, lines in days.items():
        arc.put(root, paths[day], ("\n".join(lines) + "\n").encode())
    env = {**stack.cli_env(), "TICKSTACK_ARCHIVE_CACHE_DIR": str(tmp_path / "cache"),
           "TICKSTACK_ARCHIVE_PARALLEL": "1", "TICKSTACK_ARCHIVE_ATTEMPTS": "2"}
    args = [sys.executable, "-m", "workers", "fetch", "--symbol", "BTCUSDT", "--since",
            "2019-04-01", "--until", "2019-04-03", "--ingest", "--json"]
    with ArchiveServer(root) as server:
        env["TICKSTACK_ARCHIVE_BASE_URL"] = server.url
        for _ in range(2):  # a rerun: the same, the good days not loaded twice
            r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 1, (r.stdout, r.stderr[-3000:])
            report = json.loads(r.stdout.strip().splitlines()[-1])
            status = {f["path"]: f["status"] for f in report["files"]}
            assert status[paths["2019-04-02"]] == "failed", report
            assert {status[paths[d]] for d in ("2019-04-01", "2019-04-03")} <= {
                "downloaded", "cached"}, report
            assert ("fetch: failed BTCUSDT-trades-2019-04-02.zip: verified (kept in the cache) "
                    "but not ingested: ") in r.stderr, r.stderr[-3000:]
            assert "aggregate trades are not ingested" in r.stderr
            # what this run added to the cache is counted as kept, the refused file too
            assert report["kept_bytes"] == sum(f["size"] for f in report["files"]
                                               if f["received"]), report
            assert rows(stack, "SELECT count(*), min(trade_id), max(trade_id) FROM "
                               "market_data.btc_ticks") == [(40, 1000, 3019)]


def test_a_stream_of_aggregate_trades_is_refused_and_their_events_never_stored(stack):
    for url in ("ws://127.0.0.1:9/ws/btcusdt@aggTrade",
                "ws://127.0.0.1:9/stream?streams=btcusdt@trade/btcusdt@aggTrade"):
        r = stack.cli("stream", "--url", url, "--market", "spot", timeout=60)
        assert r.returncode == 2 and "@aggTrade" in r.stderr, (url, r.stderr[-2000:])
    msgs = trade_messages()[:50]
    trades = trades_of(msgs)
    aggs = [json.dumps({"e": "aggTrade", "E": d["E"], "s": d["s"], "a": d["t"], "p": d["p"],
                        "q": d["q"], "f": d["t"], "l": d["t"], "T": d["T"], "m": d["m"],
                        "M": True}) for d in trades]
    mixed = [m for pair in zip(msgs, aggs, strict=True) for m in pair]
    run_stream(stack, mixed, "spot", "BTCUSDT", trades[-1]["t"])
    assert rows(stack, "SELECT count(*), min(trade_id), max(trade_id) FROM "
                       "market_data.btc_ticks") == [(50, trades[0]["t"], trades[-1]["t"])]
    q = quarantined(stack)
    assert len(q) == 50 and all("aggregate trade" in e["reason"] for e in q), q[:3]


# --- item 5: COIN-M quantities and notionals --------------------------------------------------

def cm_trades(n: int, start: int, t0: int = T_CM) -> list[tuple[int, str, int, int, bool]]:
    """(id, price, contracts, time ms, buyer is maker): a BTCUSD_PERP-like tape."""
    return [(start + i, f"{58000 + (i * 37) % 900}.{i % 10}", 1 + (i * 13) % 400,
             t0 + i * 700, i % 3 == 0) for i in range(n)]


def base_of(price: str, contracts: int, usd: int) -> Decimal:
    """Binance's base_qty: contracts × size / price, truncated to 8 places."""
    return (Decimal(contracts) * usd / Decimal(price)).quantize(Decimal("1e-8"), ROUND_DOWN)


def cm_file(path: Path, trades, usd: int) -> Path:
    return write(path, ["id,price,qty,base_qty,time,is_buyer_maker"] + [
        f"{i},{p},{n},{base_of(p, n, usd)},{t},{str(m).lower()}" for i, p, n, t, m in trades])


def cm_messages(symbol: str, trades) -> list[str]:
    return [json.dumps({"e": "trade", "E": t + 3, "T": t, "s": symbol, "t": i, "p": p,
                        "q": str(n), "X": "MARKET", "m": m}) for i, p, n, t, m in trades]


def cm_path(root: Path, symbol: str, day: str = "2024-08-08") -> Path:
    return root / "data/futures/cm/daily/trades" / symbol / f"{symbol}-trades-{day}.csv"


def test_coin_m_files_and_stream_store_contracts_and_the_usd_notional(local_env, tmp_path):
    trades = cm_trades(600, 900_000_000)
    via_file, via_stream = Stack(local_env), Stack(local_env)
    try:
        run_stream(via_stream, cm_messages("BTCUSD_PERP", trades), "cm", "BTCUSD_PERP",
                   trades[-1][0])
        sql = f"SELECT market, symbol, {TICK_COLUMNS} FROM market_data.btc_ticks ORDER BY 3"
        streamed = rows(via_stream, sql)
        # quantity: contracts; quote: the USD notional (100 USD a BTCUSD contract)
        assert [(r[0], r[1], r[2], r[5], r[6]) for r in streamed] == [
            ("cm", "BTCUSD_PERP", i, Decimal(n), Decimal(n * 100)) for i, _, n, _, _ in trades]
        f = cm_file(cm_path(tmp_path, "BTCUSD_PERP"), trades, 100)
        s = summary_of(via_file.cli("ingest", str(f), "--json"))
        assert (s["inserted"], s["quarantined"]) == (600, 0), s
        assert rows(via_file, sql) == streamed  # the same trade, the same row, either source
        contracts = sum(n for _, _, n, _, _ in trades)
        assert rows(via_file, "SELECT sum(quote_volume), sum(volume) FROM "
                              "market_data.btc_ohlcv_5m") == [(contracts * 100, contracts)]

        # Other coins' contracts are 10 USD; the market comes from --market as well as a path.
        eth = cm_trades(30, 70_000_000)
        e = cm_file(tmp_path / "ETHUSD_PERP-trades-2024-08-08.csv", eth, 10)
        s = summary_of(via_file.cli("ingest", str(e), "--market", "cm", "--json"))
        assert s["inserted"] == 30
        assert rows(via_file, "SELECT count(*) FROM market_data.btc_ticks WHERE symbol = "
                              "'ETHUSD_PERP' AND quote_quantity = quantity * 10") == [(30,)]

        # A base_qty that is not contracts × size / price (a wrong contract size would make
        # every row so) and fractional contracts are quarantined, each with its reason.
        bad = [(80_000_000, "3000.5", 7, T_CM, False), (80_000_001, "3000.5", 7, T_CM + 1, True)]
        b = write(tmp_path / "x" / "ETHUSD_PERP-trades-2024-08-09.csv", [
            "id,price,qty,base_qty,time,is_buyer_maker",
            f"{bad[0][0]},3000.5,7,{base_of('3000.5', 7, 100)},{T_CM},false",
            f"{bad[1][0]},3000.5,7.5,{base_of('3000.5', 7, 10)},{T_CM + 1},true",
            f"80000002,3000.5,7,{base_of('3000.5', 7, 10)},{T_CM + 2},true"])
        s = summary_of(via_file.cli("ingest", str(b), "--market", "cm", "--json"))
        assert s["inserted"] == 1 and sorted(s["quarantined_by_reason"]) == [
            "base_qty disagrees with qty x 10 USD / price (the contract size of ETHUSD_PERP)",
            "quantity is not a whole number of contracts"], s
    finally:
        via_file.close()
        via_stream.close()


def test_an_unknown_coin_m_symbol_is_refused_not_guessed(stack, tmp_path):
    f = cm_file(cm_path(tmp_path, "BTCUSDT"), cm_trades(5, 1), 100)
    r = stack.cli("ingest", str(f))
    assert r.returncode == 2 and f.name in r.stderr, r.stderr
    assert "unknown COIN-M symbol 'BTCUSDT'" in r.stderr, r.stderr
    # A USDⓈ-M file on the COIN-M path: its header says quote_qty, not base_qty.
    um = write(cm_path(tmp_path / "u", "BTCUSD_PERP"), [
        "id,price,qty,quote_qty,time,is_buyer_maker", f"1,58000.1,2,200,{T_CM},true"])
    r = stack.cli("ingest", str(um))
    assert r.returncode == 2 and "is not the cm trades layout" in r.stderr, r.stderr
    r = stack.cli("stream", "--url", "ws://127.0.0.1:9/ws/btcusdt@trade", "--market", "cm",
                  "--symbol", "BTCUSDT", timeout=60)
    assert r.returncode == 2 and "unknown COIN-M symbol" in r.stderr, r.stderr[-2000:]
    assert rows(stack, "SELECT count(*) FROM market_data.btc_ticks") == [(0,)]


# --- item 11: trades ahead of the clock -----------------------------------------------------

def test_file_trades_ahead_of_the_clock_are_quarantined(stack, tmp_path):
    now = int(time.time() * 1000)
    ahead = {3: now + 600_000, 4: now + 2 * 3_600_000, 5: now + 23 * 3_600_000}  # 10 min, 2 h, 23 h
    lines = [f"{i},4100.5,0.01,41.005,{ahead.get(i, T0 + i * 1000)},True,True"
             for i in range(1, 7)]
    f = write(tmp_path / "a" / "BTCUSDT-trades-2019-04-01.csv", lines)
    s = summary_of(stack.cli("ingest", str(f), "--json"))
    reason = ("future_time: trade time more than 300 s ahead of this machine's clock "
              "(TICKSTACK_FUTURE_TOLERANCE_SECONDS)")
    assert (s["inserted"], s["quarantined_by_reason"]) == (3, {reason: 3}), s
    assert rows(stack, "SELECT array_agg(trade_id ORDER BY trade_id) FROM "
                       "market_data.btc_ticks") == [([1, 2, 6],)]
    q = quarantined(stack)
    assert sorted(e["line"] for e in q if e["reason"] == reason) == [3, 4, 5], q
    # The tolerance is a setting: an hour lets the 10-minute one in, not the others.
    g = write(tmp_path / "b" / "BTCUSDT-trades-2019-04-01.csv",
              [ln.replace(f"{i},", f"{i + 100},", 1) for i, ln in enumerate(lines, 1)])
    s = summary_of(stack.cli("ingest", str(g), "--json"))  # the default: the same three out
    assert s["quarantined_by_reason"] == {reason: 3}, s
    r = subprocess.run([sys.executable, "-m", "workers", "ingest", str(g), "--force", "--json"],
                       cwd=REPO, env={**stack.cli_env(), "TICKSTACK_FUTURE_TOLERANCE_SECONDS":
                                      "3600"}, capture_output=True, text=True, timeout=300)
    s = summary_of(r)
    wider = reason.replace(" 300 s", " 3600 s")
    assert (s["inserted"], s["quarantined_by_reason"]) == (1, {wider: 2}), s
    assert rows(stack, "SELECT count(*) FROM market_data.btc_ticks WHERE trade_id = 103") == [
        (1,)]


def test_a_first_row_ahead_or_in_the_other_unit_does_not_set_the_files_unit(stack, tmp_path):
    """The unit (ms until 2024, µs from 2025) was fixed by the first row, whatever it held: one
    first row a day ahead in the other unit quarantined every other row of the file as "unit
    differs". The first row whose time is plausible decides; the odd row alone is quarantined."""
    now = int(time.time() * 1000)
    t25 = 1_735_776_000_000_000  # 2025-01-02 00:00:00 UTC, µs
    cases = {  # file: (first row's time, the other rows' times)
        "a": ((now + 86_000_000) * 1000, [T0 + i * 1000 for i in range(10)]),  # µs in ms
        "b": (now + 86_000_000, [t25 + i * 1_000_000 for i in range(10)]),  # ms in µs
        "c": (1_000_000_000_000, [t25 + i * 1_000_000 for i in range(10)]),  # ms, 2001
    }
    for n, (name, (first, times)) in enumerate(cases.items()):
        base = 10_000 * (n + 1)
        day = "2019-04-01" if name == "a" else "2025-01-02"
        f = write(tmp_path / name / f"BTCUSDT-trades-{day}.csv",
                  [f"{base},4100.5,0.01,41.005,{first},True,True"] +
                  [f"{base + 1 + i},4100.5,0.01,41.005,{t},True,True"
                   for i, t in enumerate(times)])
        s = summary_of(stack.cli("ingest", str(f), "--json"))
        assert (s["inserted"], s["quarantined"]) == (10, 1), (name, s)
        assert rows(stack, "SELECT count(*) FROM market_data.btc_ticks WHERE trade_id "
                           "BETWEEN %s AND %s", base, base + 10) == [(10,)], name
    assert sorted(e["line"] for e in quarantined(stack)) == [1, 1, 1]


def test_stream_trades_ahead_of_the_clock_are_quarantined(stack):
    msgs = trade_messages()[:40]
    trades = trades_of(msgs)
    last = trades[-1]
    now = int(time.time() * 1000)
    future = [json.dumps(dict(last, t=last["t"] + k, T=now + ms, E=now + ms))
              for k, ms in ((1, 3_600_000), (2, 20 * 3_600_000))]
    run_stream(stack, msgs + future, "spot", "BTCUSDT", last["t"])
    assert rows(stack, "SELECT count(*), max(trade_id) FROM market_data.btc_ticks") == [
        (40, last["t"])]
    q = quarantined(stack, "quarantine/spot/")
    assert len(q) == 2 and all(e["reason"].startswith("future_time: ") for e in q), q


def test_fetch_coin_m_ingest_loads_binance_layout_files(stack, tmp_path):
    root = tmp_path / "archive"
    days = {"2024-08-08": cm_trades(40, 900_000_000),
            "2024-08-09": cm_trades(40, 900_000_040, T_CM + 86_400_000)}
    for day, trades in days.items():
        csv = (["id,price,qty,base_qty,time,is_buyer_maker"] + [
            f"{i},{p},{n},{base_of(p, n, 100)},{t},{str(m).lower()}" for i, p, n, t, m in trades])
        arc.put(root, arc.archive_path("daily", "BTCUSD_PERP", day, market="futures/cm"),
                ("\n".join(csv) + "\n").encode())
    env = {**stack.cli_env(), "TICKSTACK_ARCHIVE_CACHE_DIR": str(tmp_path / "cache"),
           "TICKSTACK_ARCHIVE_ATTEMPTS": "2", "TICKSTACK_ARCHIVE_BACKOFF_SECONDS": "0.05"}
    with ArchiveServer(root) as server:
        env["TICKSTACK_ARCHIVE_BASE_URL"] = server.url

        def fetch(symbol: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "workers", "fetch", "--market", "cm",
                                   "--symbol", symbol, "--since", "2024-08-08", "--until",
                                   "2024-08-09", "--ingest"], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=300)

        r = fetch("BTCUSD_PERP")
        assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
        every = [t for trades in days.values() for t in trades]
        assert rows(stack, "SELECT market, symbol, trade_id, quantity, quote_quantity FROM "
                           "market_data.btc_ticks ORDER BY trade_id") == [
            ("cm", "BTCUSD_PERP", i, Decimal(n), Decimal(n * 100)) for i, _, n, _, _ in every]
        gets = len(server.gets())
        r = fetch("BTCUSDT")  # not a COIN-M symbol: no contract size, refused before fetching
        assert r.returncode == 2 and "unknown COIN-M symbol" in r.stderr, r.stderr[-2000:]
        assert len(server.gets()) == gets
