"""A local websocket server that replays recorded Binance messages (tests and benchmarks).

Each connection follows a plan entry (start, stop): it sends messages[start:stop] as fast as the
client reads them, then drops the connection when stop is set (an abrupt close, like a network
failure) or stays open, silent, when it is None. Connections beyond the plan replay everything.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading

from websockets.asyncio.server import serve

from tests.conftest import SHARED_DATA

WS_DIR = SHARED_DATA / "ws"
SPOT_TRADES = WS_DIR / "binance-spot-btcusdt-20240808.trades.jsonl"
SPOT_RAW = WS_DIR / "binance-spot-btcusdt-20240808.raw.gz"


def trade_messages() -> list[str]:
    return SPOT_TRADES.read_text().splitlines()


def raw_messages() -> list[str]:
    """The full recording (trades, depth updates, book tickers): '<ns> <json>' per line."""
    with gzip.open(SPOT_RAW, "rt") as f:
        return [line.split(" ", 1)[1].rstrip("\n") for line in f if line.strip()]


def trades_of(messages: list[str]) -> list[dict]:
    out = []
    for m in messages:
        try:
            d = json.loads(m)
        except ValueError:
            continue
        d = d.get("data", d) if isinstance(d, dict) else None
        if isinstance(d, dict) and d.get("e") == "trade":
            out.append(d)
    return out


class ReplayServer:
    def __init__(self, messages: list[str | bytes],
                 plan: list[tuple[int, int | None]] | None = None,
                 hang: bool = False):
        self.messages = messages
        self.plan = list(plan or [])
        self.connections = 0
        self.sent = 0
        self.hang = hang  # accept, then never send anything
        self.pongs = 0  # pings (sent after the messages) the client answered
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.port = 0

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("replay server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream?streams=btcusdt@trade"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        # No keepalive pings of its own: the handler's one ping is what the tests count.
        async with serve(self._handler, "127.0.0.1", 0, max_size=None, compression=None,
                         ping_interval=None) as srv:
            self.port = srv.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    async def _handler(self, ws) -> None:
        k = self.connections
        self.connections += 1
        start, stop = self.plan[k] if k < len(self.plan) else (0, None)
        if self.hang:
            await asyncio.Future()
        for m in self.messages[start:stop]:
            await ws.send(m)
            self.sent += 1
        if stop is not None:
            ws.transport.abort()  # a dropped connection, not a clean close
            return
        try:
            await asyncio.wait_for(await ws.ping(), 5)
            self.pongs += 1
        except Exception:
            pass
        await ws.wait_closed()
