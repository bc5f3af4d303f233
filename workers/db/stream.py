"""`workers stream`: the live Binance trade stream into the landing-first pipeline.

    websocket ─▶ parse/validate ─▶ micro-batch (count or age) ─▶ landing parts ─▶ primary
                 (bad: quarantined,          dedup on the offset,        ticks + offset + gaps,
                  other events: counted)     gap detection               one transaction
                                                                        ─▶ replica (best effort)
                                                        closed buckets ─▶ compaction (see
                                                                          db/stream_commit.py)

Crash safety: a trade is accepted once its batch's parts are in landing. On start the worker
first commits any landed parts the primary lacks (ON CONFLICT, idempotent), compacts buckets that
closed, and resumes after `ingestion.stream_offsets`.

Dedup is by identity (market, symbol, trade id): every id up to the newest accepted one has
been accepted except those in an open gap, so a trade at or below it is a re-send unless its id
lies in a gap — then it is a late trade, accepted, and it fills its gap. Trade ids jump → a gap
row (never marked filled until every id is present in btc_ticks). The market comes from the
stream's host or --market and is part of every key: a futures stream never touches spot.

Connection handling: capped exponential backoff with jitter between attempts; the websockets
library answers pings (and sends its own); no message for `stream_silence_seconds` means the
connection is dead. SIGTERM/SIGINT: the batch in flight is committed and the worker exits 0.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import psycopg
import pyarrow as pa
import websockets
from websockets.asyncio.client import connect

from workers.core import crashpoint, logs
from workers.core.health import Heartbeat, Metrics
from workers.core.markets import Instrument, instrument
from workers.core.pg import require_autocommit
from workers.core.settings import StreamSettings, default
from workers.core.ticks import BUCKET_US
from workers.db.stream_commit import Gap, commit_batch, compact, read_offset, refresh_gaps
from workers.landing.parts import list_parts, read_part, write_part
from workers.landing.rows import split_by_bucket
from workers.landing.store import Landing
from workers.sources.binance_stream import HARD_FRAME_LIMIT, Reject, parse, trades_table

log = logs.get("stream")



@dataclass
class StreamConfig:
    url: str
    symbol: str = "BTCUSDT"
    market: str = "spot"
    source: str = default("stream_source")
    batch_rows: int = default("stream_batch_rows")
    batch_seconds: float = default("stream_batch_seconds")
    silence_seconds: float = default("stream_silence_seconds")
    grace_seconds: float = default("stream_grace_seconds")
    backoff_initial: float = default("stream_backoff_initial_seconds")
    backoff_max: float = default("stream_backoff_max_seconds")
    max_message_bytes: int = default("stream_max_message_bytes")
    ready_seconds: float = default("stream_ready_seconds")
    # clock skew a trade time may have
    future_us: int = int(default("future_tolerance_seconds") * 1_000_000)

    @property
    def instrument(self) -> Instrument:
        """What the market's quantities mean (BadInput for an unknown COIN-M symbol)."""
        return instrument(self.market, self.symbol)

    @classmethod
    def of(cls, s: StreamSettings, url: str, symbol: str, market: str) -> StreamConfig:
        return cls(url=url, symbol=symbol.upper(), market=market, source=s.source,
                   batch_rows=s.batch_rows, batch_seconds=s.batch_seconds,
                   silence_seconds=s.silence_seconds, grace_seconds=s.grace_seconds,
                   backoff_initial=s.backoff_initial_seconds, backoff_max=s.backoff_max_seconds,
                   max_message_bytes=s.max_message_bytes, ready_seconds=s.ready_seconds,
                   future_us=int(s.future_tolerance_seconds * 1_000_000))


@dataclass
class Batch:
    ids: list[int] = field(default_factory=list)
    prices: list[str] = field(default_factory=list)
    qtys: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    makers: list[bool] = field(default_factory=list)
    kinds: list[str | None] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    started: float | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def table(self, inst: Instrument) -> pa.Table:
        return trades_table(self.ids, self.prices, self.qtys, self.times, self.makers,
                            self.kinds, inst)


class StreamWorker:
    def __init__(self, cfg: StreamConfig, conn: psycopg.Connection, landing: Landing,
                 replica=None, metrics: Metrics | None = None):
        self.cfg = cfg
        self.instrument = cfg.instrument  # an unknown COIN-M symbol fails here, before reading
        self.conn = require_autocommit(conn, "the stream")
        self.landing = landing
        self.replica = replica
        self.metrics = metrics or Metrics()
        self.heartbeat = Heartbeat(stale_after=max(30.0, cfg.silence_seconds))
        self.high_id: int | None = None  # newest accepted trade id (committed or pending)
        self.high_us: int | None = None
        self.exchange_us = 0  # newest committed trade time: closes buckets
        self.open_parts: set[int] = set()  # buckets with parts not compacted yet
        # Ids at or below high_id not accepted yet (open gaps), as sorted [first, last] ranges.
        self.missing: list[list[int]] = []
        self.batch = Batch()
        self.stopping = False
        self.connected = False
        self.last_message = 0.0
        self.last_commit = 0.0
        self.failed: str | None = None
        self._ws = None
        self._run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._n_quarantine = 0

    # --- start: repair what a crash left, then resume after the offset ----------------------

    def recover(self) -> dict:
        cfg = self.cfg
        off = read_offset(self.conn, cfg.source, cfg.market, cfg.symbol)
        prev = off
        parts = list_parts(self.landing, cfg.market, cfg.symbol)
        tables = [read_part(self.landing, k) for b in sorted(parts) for k in parts[b]]
        recovered = 0
        if tables:
            t = pa.concat_tables(tables).sort_by("trade_id")
            ids = t.column("trade_id").to_numpy()
            _, first = np.unique(ids, return_index=True)
            t = t.take(pa.array(first))
            ids = t.column("trade_id").to_numpy()
            times = t.column("event_time").cast(pa.int64()).to_numpy()
            gaps = []
            if prev is not None:
                after = ids > prev[0]
                hi_id, hi_us = prev
                for i, us in zip(ids[after], times[after], strict=True):
                    if i > hi_id + 1:
                        gaps.append(Gap(cfg.market, cfg.symbol, hi_id + 1, int(i) - 1, hi_us,
                                        int(us)))
                    hi_id, hi_us = int(i), int(us)
            # Landed parts are accepted trades: commit them all (ON CONFLICT: the committed
            # ones change nothing).
            recovered = commit_batch(self.conn, cfg.market, cfg.symbol, cfg.source, t, gaps)
            for g in gaps:
                self._count_gap(g)
        off = read_offset(self.conn, cfg.source, cfg.market, cfg.symbol)
        if off is not None:
            self.high_id, self.high_us = off
            self.exchange_us = off[1]
        self.open_parts = {b for (_, _, b) in parts}
        compacted = self._compact_closed()
        gaps = refresh_gaps(self.conn, cfg.symbol, cfg.market)
        self.missing = [[g["first_missing_id"], g["last_missing_id"]] for g in gaps
                        if g["filled_at"] is None and g["source"] == cfg.source]
        self.missing.sort()
        r = {"market": cfg.market, "offset": off[0] if off else None,
             "parts": sum(len(v) for v in parts.values()), "recovered_rows": recovered,
             "compacted": compacted, "open_gaps": len(self.missing)}
        log.info("stream recovered", **r)
        return r

    # --- messages -------------------------------------------------------------------------

    def handle(self, raw: str | bytes) -> None:
        self.last_message = time.monotonic()
        cfg = self.cfg
        try:
            tid, p, q, us, m, kind = parse(raw, cfg.symbol, cfg.max_message_bytes,
                                           market=cfg.market, instrument=self.instrument,
                                           future_us=cfg.future_us)
        except Reject as r:
            self.metrics.messages.labels(r.kind).inc()
            if r.kind != "other":
                text = raw if isinstance(raw, str) else raw[:1000].decode("utf-8", "replace")
                self._quarantine({"message": text[:500], "bytes": len(raw)}, r.reason)
            return
        self.metrics.messages.labels("trade").inc()
        if self.high_id is not None and tid <= self.high_id:
            # Every id up to high_id was accepted except those in an open gap: a late trade
            # fills its gap; anything else is a re-send (overlap after a reconnect or restart).
            if not self._take_missing(tid):
                self.metrics.trades.labels("duplicate").inc()
                return
            self.metrics.trades.labels("out_of_order").inc()
        else:
            if self.high_id is not None and tid > self.high_id + 1:
                g = Gap(cfg.market, cfg.symbol, self.high_id + 1, tid - 1,
                        self.high_us or us, us)
                self.batch.gaps.append(g)
                self.missing.append([g.first_missing_id, g.last_missing_id])
                self._count_gap(g)
            self.high_id, self.high_us = tid, us
        b = self.batch
        if b.started is None:
            b.started = time.monotonic()
        b.ids.append(tid)
        b.prices.append(p)
        b.qtys.append(q)
        b.times.append(us)
        b.makers.append(m)
        b.kinds.append(kind)

    def _take_missing(self, tid: int) -> bool:
        """Whether `tid` is in an open gap; if so it is no longer missing."""
        i = bisect.bisect_right(self.missing, [tid, float("inf")]) - 1
        if i < 0 or not self.missing[i][0] <= tid <= self.missing[i][1]:
            return False
        lo, hi = self.missing[i]
        rest = [r for r in ([lo, tid - 1], [tid + 1, hi]) if r[0] <= r[1]]
        self.missing[i:i + 1] = rest
        return True

    def _quarantine(self, where: dict, reason: str) -> None:
        self._n_quarantine += 1
        if self._n_quarantine <= 10 or self._n_quarantine % 1000 == 0:
            log.warning("message quarantined", reason=reason, count=self._n_quarantine)
        self.batch.quarantine.append({**where, "reason": reason})
        if self.batch.started is None:
            self.batch.started = time.monotonic()

    def _count_gap(self, g: Gap) -> None:
        self.metrics.gaps.inc()
        self.metrics.gap_trades.inc(g.size)
        log.warning("trade-id gap", market=g.market, symbol=g.symbol,
                    first_missing=g.first_missing_id,
                    last_missing=g.last_missing_id, missing=g.size)

    def batch_due(self) -> bool:
        b = self.batch
        return b.started is not None and (
            len(b) >= self.cfg.batch_rows
            or time.monotonic() - b.started >= self.cfg.batch_seconds)

    # --- a batch: land parts, commit, replica, compaction ---------------------------------

    def flush(self) -> None:
        b, self.batch = self.batch, Batch()
        if not len(b) and not b.quarantine:
            return
        cfg = self.cfg
        if b.quarantine:
            self.landing.write_quarantine(cfg.market, cfg.symbol, cfg.source, f"{self._run_id}-"
                                          f"{b.ids[0] if b.ids else int(time.time() * 1000)}",
                                          b.quarantine)
        if not len(b):
            return
        table = b.table(self.instrument)
        buckets = split_by_bucket(table, np.arange(table.num_rows))
        for bucket in sorted(buckets):  # in id order: a crash leaves a prefix of the batch
            write_part(self.landing, cfg.market, cfg.symbol, bucket, buckets[bucket][0])
            self.open_parts.add(bucket)
        crashpoint.reach("after_land")
        commit_batch(self.conn, cfg.market, cfg.symbol, cfg.source, table, b.gaps)
        crashpoint.reach("after_commit")
        self.last_commit = time.monotonic()
        self.metrics.batches.inc()
        self.metrics.trades.labels("accepted").inc(table.num_rows)
        newest = int(table.column("event_time").cast(pa.int64()).to_numpy().max())
        self.exchange_us = max(self.exchange_us, newest)
        self.metrics.lag.set(max(0.0, time.time() - self.exchange_us / 1e6))
        self.metrics.last_commit.set(time.time())
        if self.replica is not None:
            gaps, mkt, sym, src = b.gaps, cfg.market, cfg.symbol, cfg.source
            self.replica.submit([(mkt, sym, k) for k in buckets],
                                lambda c: commit_batch(c, mkt, sym, src, table, gaps),
                                what="batch")
        self._compact_closed()

    def _compact_closed(self) -> int:
        grace_us = int(self.cfg.grace_seconds * 1e6)
        n = 0
        for bucket in sorted(self.open_parts):
            if bucket + BUCKET_US + grace_us > self.exchange_us:
                continue
            r = compact(self.conn, self.landing, self.cfg.market, self.cfg.symbol, bucket,
                        self.cfg.source, self.replica)
            self.open_parts.discard(bucket)
            if r:
                n += 1
                self.metrics.compactions.inc()
                log.info("bucket compacted", **r)
        if n:
            refresh_gaps(self.conn, self.cfg.symbol, self.cfg.market)
        return n

    # --- the connection loop --------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.failed:
            return False, f"failed: {self.failed}"
        if not self.connected:
            return False, "not connected"
        if time.monotonic() - self.last_message > self.cfg.ready_seconds:
            return False, f"no message for {self.cfg.ready_seconds:.0f} s"
        return True, "ready"

    def request_stop(self) -> None:
        if self.stopping:
            return
        log.info("stop requested: committing the batch in flight")
        self.stopping = True
        if self._ws is not None:
            asyncio.get_running_loop().create_task(self._ws.close())

    async def _flush(self) -> None:
        await asyncio.to_thread(self.flush)

    async def _beat(self) -> None:
        while True:
            self.heartbeat.beat()
            await asyncio.sleep(1.0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        beat = asyncio.create_task(self._beat())
        attempt = 0
        try:
            while not self.stopping:
                try:
                    got = await self._connection()
                    attempt = 0 if got else attempt + 1
                except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as e:
                    log.warning("websocket connection failed", error=f"{type(e).__name__}: {e}")
                    attempt += 1
                finally:
                    self.connected = False
                    self._ws = None
                if self.batch.started is not None:
                    await self._flush()
                if self.stopping:
                    break
                delay = min(self.cfg.backoff_max,
                            self.cfg.backoff_initial * 2 ** max(0, attempt - 1))
                delay *= random.uniform(0.5, 1.0)  # jitter: many workers do not retry in step
                self.metrics.reconnects.inc()
                log.info("reconnecting", in_seconds=round(delay, 2), attempt=attempt + 1)
                end = time.monotonic() + delay
                while not self.stopping and time.monotonic() < end:
                    await asyncio.sleep(min(0.1, end - time.monotonic()))
            if self.batch.started is not None:
                await self._flush()
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"
            raise
        finally:
            beat.cancel()

    async def _connection(self) -> bool:
        """One connection until it drops, goes silent or a stop is requested; True if at
        least one message arrived."""
        got = False
        async with connect(self.cfg.url, open_timeout=10, close_timeout=2, ping_interval=20,
                           ping_timeout=20, max_size=HARD_FRAME_LIMIT, max_queue=4096) as ws:
            self._ws = ws
            self.connected = True
            self.last_message = time.monotonic()
            log.info("websocket connected", url=self.cfg.url)
            if self.stopping:
                return got
            while not self.stopping:
                wait = self.cfg.silence_seconds - (time.monotonic() - self.last_message)
                if self.batch.started is not None:
                    wait = min(wait, self.cfg.batch_seconds
                               - (time.monotonic() - self.batch.started))
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=max(0.01, wait))
                except TimeoutError:
                    if self.batch_due():
                        await self._flush()
                    if time.monotonic() - self.last_message >= self.cfg.silence_seconds:
                        log.warning("connection silent: treating it as dead",
                                    seconds=self.cfg.silence_seconds)
                        return got
                    continue
                except websockets.exceptions.ConnectionClosed as e:
                    if not self.stopping:
                        log.warning("websocket closed", code=e.rcvd.code if e.rcvd else None,
                                    reason=(e.rcvd.reason if e.rcvd else "") or str(e))
                    return got
                got = True
                self.handle(raw)
                if self.batch_due():
                    await self._flush()
        return got
