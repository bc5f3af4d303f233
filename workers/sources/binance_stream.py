"""Binance websocket trade messages: parse one message into a trade, or say why not.

Raw (`<symbol>@trade`) and combined (`{"stream": …, "data": …}`) messages; other events are
reported as "other" (counted, ignored), broken ones as "malformed"/"too_large" (quarantined).

The market comes from the stream's host (or an explicit option), never from the symbol, and
every message is checked against it: spot trades carry `M` (best match), futures trades carry
`X` (MARKET, or INSURANCE_FUND / ADL / NA — kept, flagged by `trade_kind`). On COIN-M, `q` counts
contracts: it must be whole, and the notional is contracts × contract size (markets.py), as for
COIN-M files. Aggregate trades (`<symbol>@aggTrade`, `"e": "aggTrade"`) are another dataset: a
URL naming that stream is refused, and such events are counted, never stored as trades. A trade
time further ahead of the clock than the tolerance is quarantined (`future_time`).
"""

from __future__ import annotations

import json
import re
import time

import pyarrow as pa

from workers.core.errors import BadInput
from workers.core.markets import STREAM_HOSTS, Instrument, check_market, choices
from workers.core.ticks import TICK_SCHEMA, printable
from workers.sources.validate import (
    DECIMAL,
    DEFAULT_FUTURE_TOLERANCE_US,
    MIN_TIME_US,
    SPOT_BASE,
    WHOLE,
    future_reason,
    too_old_reason,
)

_DECIMAL = re.compile(DECIMAL)
_WHOLE = re.compile(WHOLE)
# A stream name of aggregate trades in a URL: `btcusdt@aggTrade` (raw or combined form).
_AGG_STREAM = re.compile(r"@aggtrade\b", re.IGNORECASE)


def market_of_url(url: str, given: str | None = None) -> str:
    """The market a stream URL serves (its host), checked against an explicit `given` one;
    BadInput when neither says, or they disagree."""
    from urllib.parse import unquote, urlparse

    if _AGG_STREAM.search(unquote(url)):  # `%40aggTrade` names the same stream
        raise BadInput(f"{printable(url)[:200]}: an aggregate-trade stream (@aggTrade) — "
                       "aggregate trades are another dataset (their ids are another sequence) "
                       "and are never stored as trades; subscribe to <symbol>@trade")
    host = (urlparse(url).hostname or "").lower()
    from_host = STREAM_HOSTS.get(host)
    if given is not None:
        check_market(given)
        if from_host and from_host != given:
            raise BadInput(f"--market {given} contradicts the stream host {host} "
                           f"({from_host})")
        return given
    if from_host is None:
        raise BadInput(f"cannot tell the market from the host {printable(host)!r}: pass "
                       f"--market {choices('|')}")
    return from_host
HARD_FRAME_LIMIT = 16 << 20  # the websocket library closes the connection above this


class Reject(Exception):
    """A message that is not a usable trade: kind (metrics) and reason (quarantine)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def parse(raw: str | bytes, symbol: str, max_bytes: int, now_us: int | None = None, *,
          market: str = "spot", instrument: Instrument | None = None,
          future_us: int = DEFAULT_FUTURE_TOLERANCE_US
          ) -> tuple[int, str, str, int, bool, str | None]:
    """One websocket message -> (trade id, price text, qty text, trade time µs, buyer is maker,
    trade kind: None for an ordinary trade).

    Raises Reject("other"|"aggTrade", …) for messages that are not trades of this symbol
    (ignored, counted) and Reject("malformed"|"too_large"|"wrong_market"|"future_time", …) for
    broken ones (quarantined, counted)."""
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
    if data.get("e") == "aggTrade":
        raise Reject("aggTrade", "an aggregate trade (another dataset), not a trade")
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
    if instrument is not None and instrument.contract_usd and not _WHOLE.match(q):
        raise Reject("malformed", f"quantity {q[:40]!r} is not a whole number of contracts")
    now = now_us or int(time.time() * 1_000_000)
    if us < MIN_TIME_US:
        raise Reject("malformed", too_old_reason())
    if us > now + future_us:
        raise Reject("future_time", future_reason(future_us))
    kind = data.get("X")
    if market == "spot":
        if kind is not None:
            raise Reject("wrong_market", f"a futures trade (X={printable(str(kind))[:20]!r}) "
                                         "on a spot stream")
        return t, p, q, us, m, None
    if "M" in data:
        raise Reject("wrong_market", f"a spot trade (field M) on a {market} stream")
    if not isinstance(kind, str) or not re.fullmatch(r"[A-Z_]{1,32}", kind):
        raise Reject("malformed", "futures trade without a valid 'X' (trade type)")
    return t, p, q, us, m, None if kind == "MARKET" else kind


def trades_table(ids: list[int], prices: list[str], qtys: list[str], times_us: list[int],
                 makers: list[bool], kinds: list[str | None] | None = None,
                 instrument: Instrument = SPOT_BASE) -> pa.Table:
    """Parsed trades as typed tick columns (what `parse` accepted needs no second validation);
    the quote is the instrument's notional (COIN-M: contracts x contract size)."""
    price = pa.array(prices, pa.string()).cast(pa.decimal128(24, 8))
    qty = pa.array(qtys, pa.string()).cast(pa.decimal128(24, 8))
    return pa.table({
        "trade_id": pa.array(ids, pa.int64()),
        "event_time": pa.array(times_us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "price": price,
        "quantity": qty,
        "quote_quantity": instrument.quote(price, qty),
        "is_buyer_maker": pa.array(makers, pa.bool_()),
        "trade_kind": pa.array(kinds if kinds is not None else [None] * len(ids), pa.string()),
    }, schema=TICK_SCHEMA)
