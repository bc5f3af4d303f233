"""The tick contract every layer shares: the landed schema, its version, the bucket width and
the conversions between microseconds since the epoch (how ticks are carried) and datetimes
(how the database returns them).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING

from workers.core.errors import BadInput

if TYPE_CHECKING:
    import pyarrow as pa


@cache
def tick_schema() -> pa.Schema:
    """What lands and loads (schema_version 2 of the landing objects; version 1 had no
    trade_kind). Built on first use: what only checks names and times never loads pyarrow."""
    import pyarrow as pa

    return pa.schema([
        ("trade_id", pa.int64()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("price", pa.decimal128(24, 8)),
        ("quantity", pa.decimal128(24, 8)),
        ("quote_quantity", pa.decimal128(32, 8)),
        ("is_buyer_maker", pa.bool_()),
        # NULL: an ordinary trade; otherwise what the exchange says it is (USDⓈ-M `X`:
        # INSURANCE_FUND, ADL, ...): kept, flagged, left out of the OHLCV.
        ("trade_kind", pa.string()),
    ])


def __getattr__(name: str):
    if name == "TICK_SCHEMA":  # `from workers.core.ticks import TICK_SCHEMA` still works
        return tick_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SCHEMA_VERSION = 2

# A trade's identity is (market, symbol, trade id): Binance trade ids are per market.
MARKETS = ("spot", "um", "cm")  # spot, USDⓈ-M futures, COIN-M futures
# The database's own pattern (sql/005, sql/004): safe in keys, paths and messages.
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9_]{2,32}$")


def check_market(market: str) -> str:
    if market not in MARKETS:
        raise BadInput(f"unknown market {market!r} (spot, um = USDⓈ-M, cm = COIN-M)")
    return market


def check_symbol(symbol: str) -> str:
    """A symbol as Binance spells them (A-Z, 0-9, _; 2-32 characters), before anything is
    written under it; BadInput (exit 2) otherwise."""
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        shown = printable(str(symbol))[:40]
        raise BadInput(f"not a symbol: {shown!r} (2-32 characters A-Z, 0-9, _)")
    return symbol


def printable(text: str) -> str:
    """Text from data made safe to echo on a terminal: control characters (escape sequences
    included) shown as \\xNN."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def conform(table: pa.Table) -> pa.Table:
    """A landed table in the current schema (objects of schema version 1 have no trade_kind)."""
    import pyarrow as pa

    if "trade_kind" not in table.column_names:
        table = table.append_column("trade_kind", pa.nulls(table.num_rows, pa.string()))
    schema = tick_schema()
    return table.select(schema.names).cast(schema)

BUCKET_US = 300_000_000  # 5 minutes


def to_dt(us: int) -> datetime:
    """Microseconds since the epoch -> aware UTC datetime (exact: no float rounding)."""
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def to_us(t: datetime) -> int:
    """Aware datetime -> microseconds since the epoch (exact)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso(us: int) -> str:
    """A bucket or instant as `YYYY-MM-DDTHH:MM:SSZ` for messages."""
    return to_dt(us).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> int:
    """An ISO timestamp (UTC when it names no zone) -> µs; ValueError with the text otherwise."""
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO timestamp: {value!r}") from None
    return to_us(t)
