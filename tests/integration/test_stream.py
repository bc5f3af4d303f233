"""The live stream worker against a local websocket server replaying real Binance messages.

The worker runs as a real process (`python -m workers stream`), on real servers (primary
PostgreSQL + TimescaleDB, moto S3). Expectations are computed independently from the recorded
messages with json + Decimal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.pipeline import Stack
from tests.integration.wsreplay import ReplayServer, raw_messages, trade_messages, trades_of
from workers.db.ingest import ingest_landing
from workers.db.stream_commit import compact_all
from workers.landing.parts import list_parts

FAST = {  # small batches so a run has many commits; grace 0 so buckets compact during a run
    "TICKSTACK_STREAM_BATCH_ROWS": "500", "TICKSTACK_STREAM_BATCH_SECONDS": "0.2",
    "TICKSTACK_STREAM_GRACE_SECONDS": "0", "TICKSTACK_STREAM_SILENCE_SECONDS": "5",
    "TICKSTACK_STREAM_BACKOFF_INITIAL_SECONDS": "0.05",
    "TICKSTACK_STREAM_BACKOFF_MAX_SECONDS": "0.5",
    "TICKSTACK_HEALTH_HOST": "127.0.0.1", "TICKSTACK_HEALTH_PORT": "0",
}


@pytest.fixture
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


@pytest.fixture(scope="module")
def recorded():
    msgs = trade_messages()
    trades = trades_of(msgs)
    per_bucket: dict[datetime, list] = defaultdict(list)
    for d in trades:
        b = datetime.fromtimestamp(d["T"] // 300_000 * 300, UTC)
        per_bucket[b].append((d["t"], Decimal(d["p"]), Decimal(d["q"])))
    return {"messages": msgs, "trades": trades,
            "buckets": {b: (len(v), sum(q for _, _, q in v)) for b, v in per_bucket.items()},
            "last_id": max(d["t"] for d in trades)}


class Worker:
    """`python -m workers stream` as a process; stderr kept in a file for its JSON logs."""

    def __init__(self, stack: Stack, url: str, tmp: Path, **env):
        self.stack = stack
        self.log = tmp / f"stream-{time.monotonic_ns()}.log"
        self._f = open(self.log, "w")  # noqa: SIM115 - closed in wait()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "workers", "stream", "--url", url, "--symbol", "BTCUSDT"],
            cwd=REPO, env={**stack.cli_env(), **FAST, **env}, stdout=self._f, stderr=self._f)

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            with_json = line[line.find("{"):] if "{" in line else ""
            with contextlib.suppress(ValueError):
                out.append(json.loads(with_json))
        return out

    def port(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.events():
                if e.get("event") == "health server":
                    return e["port"]
            assert self.p.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError("no health server line")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port()}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, **labels) -> float:
        _, text = self.get("/metrics")
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                       if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def wait_offset(self, last_id: int, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.p.poll() is None, f"worker exited {self.p.returncode}:\n" \
                                          f"{self.log.read_text()[-3000:]}"
            if offset(self.stack) == last_id and any(
                    e.get("event") == "stream recovered" for e in self.events()):
                return
            time.sleep(0.1)
        raise AssertionError(f"offset {offset(self.stack)} never reached {last_id}:\n"
                             f"{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        self.p.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.p.wait(timeout)
        finally:
            self._f.close()


def offset(stack: Stack) -> int | None:
    with stack.admin() as c:
        r = c.execute("SELECT last_trade_id FROM ingestion.stream_offsets "
                      "WHERE source = 'stream:binance' AND symbol = 'BTCUSDT'").fetchone()
    return r[0] if r else None


def tick_summary(stack: Stack) -> dict:
    with stack.admin() as c:
        rows = c.execute("SELECT bucket_5m, count(*), sum(quantity), count(DISTINCT trade_id) "
                         "FROM market_data.btc_ticks GROUP BY 1 ORDER BY 1").fetchall()
    assert all(n == distinct for _, n, _, distinct in rows)
    return {b: (n, q) for b, n, q, _ in rows}


def gaps(stack: Stack) -> list[tuple]:
    with stack.admin() as c:
        return c.execute("SELECT first_missing_id, last_missing_id, after_time, before_time, "
                         "present_count, filled_at IS NOT NULL FROM ingestion.stream_gaps "
                         "ORDER BY 1").fetchall()


def parts_content(stack: Stack) -> dict:
    """Open buckets' part rows (the split into parts depends on batch timing; the rows not)."""
    out = {}
    landing = stack.landing()
    for (sym, bucket), keys in list_parts(landing).items():
        ids = sorted(i for k in keys for i in landing.read(k)[0].column("trade_id").to_pylist())
        out[(sym, bucket)] = ids
    return out


def full_state(stack: Stack) -> tuple:
    with stack.admin() as c:
        offs = c.execute("SELECT source, symbol, last_trade_id, last_event_time "
                         "FROM ingestion.stream_offsets ORDER BY 1, 2").fetchall()
    return stack.state() + (offs, gaps(stack), parts_content(stack))


def test_recorded_stream_lands_every_trade_exactly_once(stack, recorded, tmp_path):
    """The full raw recording: trades, depth updates and book tickers interleaved."""
    msgs = raw_messages()
    assert len(msgs) == 41_249
    with ReplayServer(msgs) as srv:
        w = Worker(stack, srv.url, tmp_path)
        w.wait_offset(recorded["last_id"])
        assert w.get("/healthz")[0] == 200
        assert w.get("/readyz") == (200, "ready\n")
        assert w.metric("tickstack_stream_messages_total", kind="trade") == 9757
        assert w.metric("tickstack_stream_messages_total", kind="other") == 41_249 - 9757
        assert w.metric("tickstack_stream_trades_total", outcome="accepted") == 9757
        assert w.metric("tickstack_stream_batches_total") >= 9757 // 500
        assert w.metric("tickstack_stream_lag_seconds") > 0  # the recording is from 2024
        assert w.stop() == 0, w.log.read_text()[-3000:]
    assert tick_summary(stack) == recorded["buckets"]
    assert gaps(stack) == []
    # Buckets closed during the run were compacted into their landing objects and registered;
    # the last one (00:00, still open) is in parts.
    reg = stack.registry()
    assert [(r[1].strftime("%H:%M"), r[3]) for r in reg] == [
        (b.strftime("%H:%M"), n) for b, (n, _) in sorted(recorded["buckets"].items())][:-1]
    for r in reg:
        table, digest, _ = stack.landing().read(
            f"raw/BTCUSDT/{r[1]:%Y-%m-%d}/{r[1]:%H%M}.parquet")
        assert digest == r[2] and table.num_rows == r[3]
    open_parts = parts_content(stack)
    assert [len(v) for v in open_parts.values()] == [recorded["buckets"][max(
        recorded["buckets"])][0]]
    # The DR replay path finds every accepted trade: compact what is open, then replay all of
    # landing into an empty database.
    with stack.ingest_conn() as conn:
        assert compact_all(conn, stack.landing()) == 1
    fresh = Stack(stack.env)
    try:
        with fresh.ingest_conn() as conn:
            r = ingest_landing(conn, stack.landing(), "raw/")
        assert r.inserted == 9757
        assert fresh.checksums() == stack.checksums()
    finally:
        fresh.close()


def test_sigterm_commits_the_batch_in_flight(stack, recorded, tmp_path):
    msgs = recorded["messages"][:1234]
    with ReplayServer(msgs) as srv:
        # Batches would wait a minute: only the shutdown can commit these trades.
        w = Worker(stack, srv.url, tmp_path, TICKSTACK_STREAM_BATCH_SECONDS="60",
                   TICKSTACK_STREAM_BATCH_ROWS="100000")
        end = time.monotonic() + 30
        while w.metric("tickstack_stream_messages_total", kind="trade") < 1234:
            assert time.monotonic() < end
            time.sleep(0.1)
        assert offset(stack) is None
        assert w.stop() == 0, w.log.read_text()[-3000:]
    assert offset(stack) == recorded["trades"][1233]["t"]
    assert sum(n for n, _ in tick_summary(stack).values()) == 1234


def test_dropped_connection_leaves_a_recorded_gap_until_filled(stack, recorded, tmp_path):
    trades = recorded["trades"]
    # First connection: 3000 messages, then dropped; the second resumes 500 trades later.
    with ReplayServer(recorded["messages"], plan=[(0, 3000), (3500, None)]) as srv:
        w = Worker(stack, srv.url, tmp_path)
        w.wait_offset(recorded["last_id"])
        assert w.metric("tickstack_stream_gaps_total") == 1
        assert w.metric("tickstack_stream_gap_trades_total") == 500
        assert w.metric("tickstack_stream_reconnects_total") >= 1
        assert w.stop() == 0
    assert srv.connections == 2
    before_t = datetime.fromtimestamp(trades[3500]["T"] / 1000, UTC)
    after_t = datetime.fromtimestamp(trades[2999]["T"] / 1000, UTC)
    assert gaps(stack) == [(trades[3000]["t"], trades[3499]["t"], after_t, before_t, 0, False)]
    assert sum(n for n, _ in tick_summary(stack).values()) == 9757 - 500
    # A plain stream cannot re-send; the gap stays open until the ids are really present.
    r = stack.cli("stream", "--gaps")
    assert r.returncode == 0 and "OPEN (0 of 500 present)" in r.stdout, r.stdout + r.stderr

    def ingest_csv(rows, name):
        p = tmp_path / name
        p.write_text("".join(f"{d['t']},{d['p']},{d['q']},"
                             f"{Decimal(d['p']) * Decimal(d['q']):.8f},{d['T']},"
                             f"{'True' if d['m'] else 'False'},True\n" for d in rows))
        r = stack.cli("ingest", str(p), "--symbol", "BTCUSDT")
        assert r.returncode == 0, r.stderr

    ingest_csv(trades[3000:3250], "BTCUSDT-trades-2024-08-08-a.csv")
    r = stack.cli("stream", "--gaps", "--json")
    (g,) = json.loads(r.stdout)
    assert (g["present_count"], g["filled_at"]) == (250, None)
    ingest_csv(trades[3250:3500], "BTCUSDT-trades-2024-08-08-b.csv")
    (g,) = json.loads(stack.cli("stream", "--gaps", "--json").stdout)
    assert g["present_count"] == 500 and g["filled_at"] is not None
    assert tick_summary(stack) == recorded["buckets"]


def test_resume_from_the_right_id_has_no_gap_and_no_duplicate(stack, recorded, tmp_path):
    # Dropped twice: resumed with an overlap of 100 (re-sent trades), then exactly.
    plan = [(0, 3000), (2900, 6000), (6000, None)]
    with ReplayServer(recorded["messages"], plan=plan) as srv:
        w = Worker(stack, srv.url, tmp_path)
        w.wait_offset(recorded["last_id"])
        assert w.metric("tickstack_stream_trades_total", outcome="duplicate") == 100
        assert w.metric("tickstack_stream_gaps_total") == 0
        assert w.stop() == 0
    assert srv.connections == 3
    assert gaps(stack) == []
    assert tick_summary(stack) == recorded["buckets"]


@pytest.fixture(scope="module")
def uninterrupted(local_env, recorded, tmp_path_factory):
    s = Stack(local_env)
    try:
        with ReplayServer(recorded["messages"]) as srv:
            w = Worker(s, srv.url, tmp_path_factory.mktemp("ref"))
            w.wait_offset(recorded["last_id"])
            assert w.stop() == 0
        yield full_state(s)
    finally:
        s.close()


@pytest.mark.parametrize("crash_at", [
    "after_commit:3",      # between batches
    "after_land:5",        # inside a batch: parts landed, nothing committed
    "compact_landed:2",    # bucket object written, not registered (the last compaction)
    "compact_committed:1",  # registered, parts not deleted yet
])
def test_kill_9_then_restart_is_exact(stack, recorded, uninterrupted, tmp_path, crash_at):
    with ReplayServer(recorded["messages"]) as srv:
        w = Worker(stack, srv.url, tmp_path, TICKSTACK_CRASH_AT=crash_at)
        assert w.wait() == -signal.SIGKILL, w.log.read_text()[-3000:]
        assert f"crashpoint: SIGKILL at {crash_at.split(':')[0]}" in w.log.read_text()
        if not crash_at.startswith("compact_landed"):
            assert offset(stack) != recorded["last_id"]  # killed mid-run
        # Restart: the server replays from the start again; ids at or below the offset are
        # skipped, landed-but-uncommitted parts are committed first.
        w = Worker(stack, srv.url, tmp_path)
        w.wait_offset(recorded["last_id"])
        assert w.stop() == 0, w.log.read_text()[-3000:]
    recovered = [e for e in w.events() if e.get("event") == "stream recovered"]
    assert recovered and recovered[0]["offset"] is not None
    assert full_state(stack) == uninterrupted


def test_malformed_messages_are_quarantined_or_ignored(stack, recorded, tmp_path):
    good = recorded["messages"][:1000]
    t0 = json.loads(good[0])["data"]

    def trade(**over):
        d = {**t0, **over}
        return json.dumps({"stream": "btcusdt@trade", "data": {k: v for k, v in d.items()
                                                                if v is not None}})

    bad = [
        "this is not json", "{\"stream\": ", "[1, 2, 3]", "null",
        json.dumps({"stream": "btcusdt@trade", "data": "nope"}),
        trade(p=None),                        # missing price
        trade(t=None),                        # missing id
        trade(t="3735683259"),                # id as a string
        trade(p=61837.63),                    # price as a number
        trade(q="-0.5"),                      # negative quantity
        trade(p="0.00000000"),                # zero price
        trade(p="1.123456789"),               # 9 decimal places
        trade(T=1723161255),                  # seconds
        trade(m="true"),                      # boolean as text
        trade(s="ETHUSDT"),                   # another symbol: ignored
        json.dumps({"stream": "btcusdt@depth", "data": {"e": "depthUpdate", "s": "BTCUSDT"}}),
        json.dumps({"result": None, "id": 1}),  # a subscription reply
        "x" * (1 << 20),                      # a 1 MiB frame
        b"\xff\xfe\x00binary",                # a binary frame that is not UTF-8 JSON
    ]
    quarantined = len(bad) - 3  # other symbol, depth update, subscription reply: ignored
    msgs = good[:500] + bad + good[500:]
    with ReplayServer(msgs) as srv:
        w = Worker(stack, srv.url, tmp_path)
        w.wait_offset(json.loads(good[-1])["data"]["t"])
        assert w.metric("tickstack_stream_messages_total", kind="other") == 3
        assert (w.metric("tickstack_stream_messages_total", kind="malformed")
                + w.metric("tickstack_stream_messages_total", kind="too_large")) == quarantined
        assert w.metric("tickstack_stream_messages_total", kind="too_large") == 1
        assert w.get("/readyz")[0] == 200
        assert w.stop() == 0
    assert srv.connections == 1  # nothing made the worker drop the connection
    assert sum(n for n, _ in tick_summary(stack).values()) == 1000
    q = []
    for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket,
                                                                   Prefix="quarantine/"):
        for o in page.get("Contents", []):
            body = stack.s3.get_object(Bucket=stack.bucket, Key=o["Key"])["Body"].read()
            q += [json.loads(line) for line in body.decode().splitlines()]
    assert len(q) == quarantined
    reasons = " | ".join(r["reason"] for r in q)
    for expect in ("not JSON", "missing field 'p'", "missing field 't'", "trade id 't' is not",
                   "price is not a decimal string", "quantity '-0.5'", "neither ms nor",
                   "'m' (buyer is maker)", "bytes (limit 65536)"):
        assert expect in reasons, reasons
    assert all(len(r.get("message", "")) <= 500 for r in q)


def test_readyz_fails_without_a_connection(stack, tmp_path):
    w = Worker(stack, "ws://127.0.0.1:9/nothing", tmp_path)  # port 9: refused
    try:
        end = time.monotonic() + 20
        while "reconnecting" not in w.log.read_text():
            assert time.monotonic() < end, w.log.read_text()
            time.sleep(0.1)
        assert w.get("/readyz") == (503, "not connected\n")
        assert w.get("/healthz")[0] == 200
        assert w.metric("tickstack_stream_reconnects_total") >= 1
    finally:
        assert w.stop() == 0
    assert re.search(r"reconnecting", w.log.read_text())
    assert os.path.exists(w.log)


def test_silent_connection_is_dead_and_pings_are_answered(stack, recorded, tmp_path):
    msgs = recorded["messages"][:100]
    with ReplayServer(msgs) as srv:  # 100 trades, a ping, then silence
        w = Worker(stack, srv.url, tmp_path, TICKSTACK_STREAM_SILENCE_SECONDS="1.5")
        end = time.monotonic() + 30
        while srv.connections < 3:
            assert time.monotonic() < end, w.log.read_text()[-3000:]
            time.sleep(0.1)
        assert srv.pongs >= 1
        assert "connection silent: treating it as dead" in w.log.read_text()
        assert w.metric("tickstack_stream_trades_total", outcome="duplicate") >= 100
        assert w.stop() == 0
    assert sum(n for n, _ in tick_summary(stack).values()) == 100
