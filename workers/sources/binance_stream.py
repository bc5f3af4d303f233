"""Binance websocket trade messages: parse one message into a trade, or say why not.

Raw (`<symbol>@trade`) and combined (`{"stream": …, "data": …}`) messages; other events are
reported as "other" (counted, ignored), broken ones as "malformed"/"too_large" (quarantined).
"""

from __future__ import annotations

import json
import re
import time

import pyarrow as pa

from workers.core.ticks import TICK_SCHEMA
from workers.sources.validate import DECIMAL, FUTURE_SLACK_US, MIN_TIME_US, quote_of

_DECIMAL = re.compile(DECIMAL)
HARD_FRAME_LIMIT = 16 << 20  # the websocket library closes the connection above this


class Reject(Exception):
    """A message that is not a usable trade: kind (metrics) and reason (quarantine)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def parse(raw: str | bytes, symbol: str, max_bytes: int, now_us: int | None = None
          ) -> tuple[int, str, str, int, bool]:
    """One websocket message -> (trade id, price text, qty text, trade time µs, buyer is maker).

    Raises Reject("other", …) for messages that are not trades of this symbol (ignored, counted)
    and Reject("malformed"|"too_large", …) for broken ones (quarantined, counted)."""
    if len(raw) > max_bytes:
        raise Reject("too_large", f"message of {len(raw)} bytes (limit {max_bytes})")
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Reject("malformed", "not JSON") from None
    if not isinstance(msg, dict):
        raise Reject("malformed", f"JSON {type(msg).__name__}, not an object")
    data = msg["data"] if "data" in msg and "stream" in msg else msg
    if not isinstance(data, dict):
        raise Reject("malformed", "combined-stream data is not an object")
    if data.get("e") != "trade":
        raise Reject("other", f"event {data.get('e')!r}" if "e" in data else "no event type")
    if data.get("s") != symbol:
        raise Reject("other", f"symbol {data.get('s')!r}")
    for f in ("t", "p", "q", "T", "m"):
        if f not in data:
            raise Reject("malformed", f"missing field {f!r}")
    t, p, q, tt, m = data["t"], data["p"], data["q"], data["T"], data["m"]
    if not isinstance(t, int) or isinstance(t, bool) or t < 0:
        raise Reject("malformed", "trade id 't' is not a non-negative integer")
    if not isinstance(tt, int) or isinstance(tt, bool):
        raise Reject("malformed", "trade time 'T' is not an integer")
    if not isinstance(m, bool):
        raise Reject("malformed", "'m' (buyer is maker) is not a boolean")
    for name, v in (("price", p), ("quantity", q)):
        if not isinstance(v, str):
            raise Reject("malformed", f"{name} is not a decimal string")
        if not _DECIMAL.match(v) or not v.strip("0."):
            raise Reject("malformed", f"{name} {v[:40]!r} is not a positive decimal "
                                      "(at most 8 places)")
    digits = len(str(tt))
    if digits == 13:
        us = tt * 1000
    elif digits == 16:
        us = tt
    else:
        raise Reject("malformed", "trade time is neither ms nor µs")
    now = now_us or int(time.time() * 1_000_000)
    if us < MIN_TIME_US or us > now + FUTURE_SLACK_US:
        raise Reject("malformed", "trade time outside 2017-07-01 .. now+1 day")
    return t, p, q, us, m


def trades_table(ids: list[int], prices: list[str], qtys: list[str], times_us: list[int],
                 makers: list[bool]) -> pa.Table:
    """Parsed trades as typed tick columns (what `parse` accepted needs no second validation)."""
    price = pa.array(prices, pa.string()).cast(pa.decimal128(24, 8))
    qty = pa.array(qtys, pa.string()).cast(pa.decimal128(24, 8))
    return pa.table({
        "trade_id": pa.array(ids, pa.int64()),
        "event_time": pa.array(times_us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "price": price,
        "quantity": qty,
        "quote_quantity": quote_of(price, qty),
        "is_buyer_maker": pa.array(makers, pa.bool_()),
    }, schema=TICK_SCHEMA)
