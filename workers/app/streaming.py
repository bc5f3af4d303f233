"""`workers stream`: the live trade stream run to its end, and its recorded trade-id gaps."""

from __future__ import annotations

from dataclasses import dataclass

from workers.app.context import Context
from workers.app.results import Shown


@dataclass
class Gaps:
    """The recorded trade-id gaps of one symbol, re-counted (open ones first)."""

    symbol: str
    rows: list[dict]

    def summary(self) -> str:
        if not self.rows:
            return f"stream: no trade-id gaps recorded for {self.symbol}"
        n_open = sum(1 for g in self.rows if g["filled_at"] is None)
        return f"stream: {len(self.rows)} trade-id gap(s) of {self.symbol}, {n_open} open"

    def details(self) -> list[str]:
        out = []
        for g in self.rows:
            n = g["last_missing_id"] - g["first_missing_id"] + 1
            state = f"filled {g['filled_at']:%Y-%m-%d %H:%M:%S}" if g["filled_at"] else \
                f"OPEN ({g['present_count']:,} of {n:,} present)"
            span = f"{g['after_time'].isoformat()} .. {g['before_time'].isoformat()}"
            out.append(f"{g['source']} {g['market']} {g['symbol']} ids {g['first_missing_id']}.."
                       f"{g['last_missing_id']} ({n:,} trades) between {span}: {state}")
        return out

    def as_dict(self) -> dict:
        return {"symbol": self.symbol, "gaps": self.rows}

    def to_json(self) -> list[dict]:
        return self.rows


def gaps(ctx: Context, symbol: str, market: str | None = None) -> Gaps:
    from workers.db.stream_commit import refresh_gaps

    with ctx.connect("ingest") as conn:
        return Gaps(symbol, refresh_gaps(conn, symbol, market))


def stream(ctx: Context, url: str, symbol: str, market: str | None = None) -> Shown:
    """Run the stream until SIGTERM/SIGINT; its final counters (logged; nothing printed)."""
    import asyncio
    import signal

    from workers.core import crashpoint, logs
    from workers.core.health import HealthServer, Metrics
    from workers.core.markets import check_symbol, instrument
    from workers.db import stream as live
    from workers.sources.binance_stream import market_of_url

    s = ctx.settings
    check_symbol(symbol.upper())
    market = market_of_url(url, market)  # the host says, or --market; never the symbol
    instrument(market, symbol.upper())  # an unknown COIN-M contract size: exit 2 now
    crashpoint.configure(s.crash_at)
    cfg = live.StreamConfig.of(s.stream, url, symbol, market)
    metrics = Metrics()
    writer = ctx.replica_writer(metrics)
    log = logs.get("stream")
    try:
        with ctx.connect("ingest") as conn:
            worker = live.StreamWorker(cfg, conn, ctx.landing, writer, metrics)

            def early_stop(*_):  # SIGTERM while recovering: stop once recovered (then the
                worker.stopping = True  # event loop's own handlers take over)

            signal.signal(signal.SIGTERM, early_stop)
            signal.signal(signal.SIGINT, early_stop)
            health = HealthServer(metrics, s.stream.health_host, s.stream.health_port,
                                  worker.heartbeat.alive, worker.ready).start()
            log.info("health server", host=s.stream.health_host, port=health.port)
            try:
                worker.recover()
                asyncio.run(worker.run())
            finally:
                health.stop()
    finally:
        if writer is not None:
            writer.close()
    done = {"trades": metrics.value("tickstack_stream_trades_total", outcome="accepted"),
            "batches": metrics.value("tickstack_stream_batches_total")}
    log.info("stream stopped", **done)
    return Shown(done, text=lambda d: [], json=lambda d: d)
