"""The markets tickstack knows, in one registry: each market's name (the CLI choice, the landing
key's segment, the database's `market` column), where the Binance archive keeps its files, which
stream hosts serve it, its trades file layout and what a quantity means on it. Everything that
lists markets reads them from here — the CLI, the stack config's `stream_market`, the archive,
stream and layout code — and the database's `ingestion.markets` table (sql/026) holds the same
names (tests/unit/test_markets.py ties the two). docs/extending.md: adding a market.

Also the identities built on a market: an `Instrument` (market + symbol, with its quantity
semantics) and a `BucketId` (market, symbol, bucket start), a bucket's identity through the
pipeline. Nothing here imports pyarrow: the CLI reads its choices from this module at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from workers.core.errors import BadInput, printable

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Layout:
    """The columns of a Binance dump file and which of them the loader reads."""

    kind: str  # "trades" | "aggTrades"
    columns: tuple[str, ...]  # names of the file's columns, in order
    id_col: str
    qty_col: str
    time_col: str
    quote_col: str | None
    base_col: str | None = None  # COIN-M: the coin amount, cross-checked, not stored


SPOT_TRADES = Layout("trades", ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker",
                                "is_best_match"), "id", "qty", "time", "quote_qty")
# The futures layouts (a header, one column less): what the columns say of the market.
FUT_TRADES = Layout("trades", SPOT_TRADES.columns[:6], "id", "qty", "time", "quote_qty")
CM_TRADES = Layout("trades", ("id", "price", "qty", "base_qty", "time", "is_buyer_maker"),
                   "id", "qty", "time", None, "base_qty")


@dataclass(frozen=True)
class Market:
    """One market: everything the code needs to know that differs between markets."""

    name: str  # CLI choice, landing key segment, SQL `market` value
    short: str  # how a message names it beside its code ("" when the name says it)
    title: str  # how help text names it
    archive_path: str  # data/<archive_path>/<daily|monthly>/... in the Binance archive
    stream_hosts: tuple[str, ...]  # the websocket hosts serving its trade streams
    trades: Layout  # its trades file layout
    futures: bool
    # Contract-denominated markets (COIN-M): USD face value of one contract by symbol pattern,
    # first match wins; Binance: BTCUSD contracts are 100 USD, every other one 10 USD. A symbol
    # no pattern matches is refused, never guessed. Empty: quantities are in the base asset.
    contract_usd: tuple[tuple[re.Pattern[str], int], ...] = ()

    @property
    def contract_sized(self) -> bool:
        return bool(self.contract_usd)


_REGISTRY: tuple[Market, ...] = (
    Market("spot", "", "spot", "spot", ("stream.binance.com", "data-stream.binance.vision"),
           SPOT_TRADES, futures=False),
    Market("um", "USDⓈ-M", "USDⓈ-M futures", "futures/um", ("fstream.binance.com",),
           FUT_TRADES, futures=True),
    Market("cm", "COIN-M", "COIN-M futures", "futures/cm", ("dstream.binance.com",),
           CM_TRADES, futures=True,
           contract_usd=((re.compile(r"^BTCUSD_(?:PERP|\d{6})$"), 100),
                         (re.compile(r"^[A-Z0-9]{2,20}USD_(?:PERP|\d{6})$"), 10))),
)
BY_NAME: dict[str, Market] = {m.name: m for m in _REGISTRY}
MARKETS: tuple[str, ...] = tuple(BY_NAME)  # the names, in registry order
# The stack config's and type hints' type of a market name, derived from the registry.
MarketName = Literal[MARKETS]  # type: ignore[valid-type]
STREAM_HOSTS: dict[str, str] = {h: m.name for m in _REGISTRY for h in m.stream_hosts}
ARCHIVE_MARKET_PATHS: dict[str, str] = {m.name: m.archive_path for m in _REGISTRY}


def choices(sep: str = ", ") -> str:
    """The names as a CLI message lists them: `spot, um, cm`, `spot|um|cm`."""
    return sep.join(MARKETS)


def choices_help() -> str:
    """The names with what they are, for --help: `spot, um (USDⓈ-M futures) or cm (...)`."""
    named = [m.name if m.title == m.name else f"{m.name} ({m.title})" for m in _REGISTRY]
    return f"{', '.join(named[:-1])} or {named[-1]}" if len(named) > 1 else named[0]


def market(name: str) -> Market:
    """The market of this name; BadInput (exit 2) naming the known ones otherwise."""
    found = BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        known = ", ".join(f"{m.name} = {m.short}" if m.short else m.name for m in _REGISTRY)
        raise BadInput(f"unknown market {name!r} ({known})")
    return found


def check_market(name: str) -> str:
    return market(name).name


# The database's own pattern (sql/005, sql/004): safe in keys, paths and messages.
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9_]{2,32}$")


def check_symbol(symbol: str) -> str:
    """A symbol as Binance spells them (A-Z, 0-9, _; 2-32 characters), before anything is
    written under it; BadInput (exit 2) otherwise."""
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        shown = printable(str(symbol))[:40]
        raise BadInput(f"not a symbol: {shown!r} (2-32 characters A-Z, 0-9, _)")
    return symbol


@dataclass(frozen=True)
class Instrument:
    """A (market, symbol) with its quantity semantics; build one with `instrument()`."""

    market: str
    symbol: str
    contract_usd: int | None = None  # contract-sized markets: USD face value of one contract

    @property
    def quantity_unit(self) -> str:
        return "contracts" if self.contract_usd else "base asset"

    def quote(self, price: pa.Array, qty: pa.Array) -> pa.Array:
        """The notional of each trade, exact, at 8 places (decimal128(32, 8))."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.contract_usd:
            return pc.cast(pc.multiply(pc.cast(qty, pa.decimal128(24, 8)),
                                       pa.scalar(self.contract_usd, pa.decimal128(6, 0))),
                           pa.decimal128(32, 8))
        return pc.cast(pc.multiply(pc.cast(price, pa.decimal128(18, 8)),
                                   pc.cast(qty, pa.decimal128(18, 8))),
                       pa.decimal128(32, 8), safe=False)


def contract_usd(symbol: str, of: str = "cm") -> int | None:
    """A symbol's contract size in USD on a contract-sized market, or None when unknown."""
    for pattern, usd in market(of).contract_usd:
        if pattern.match(symbol):
            return usd
    return None


def instrument(market_name: str, symbol: str) -> Instrument:
    """The instrument of a market's symbol (both checked); BadInput (exit 2) for a symbol of a
    contract-sized market whose contract size is not known (its notional cannot be computed)."""
    m = market(market_name)
    check_symbol(symbol)
    if not m.contract_sized:
        return Instrument(m.name, symbol)
    usd = contract_usd(symbol, m.name)
    if usd is None:
        raise BadInput(f"unknown {m.short} symbol {printable(symbol)[:40]!r}: its contract size "
                       "is not known (COIN-M symbols are <COIN>USD_PERP or <COIN>USD_<YYMMDD>; "
                       "workers/core/markets.py, the market's contract_usd)")
    return Instrument(m.name, symbol, usd)


class BucketId(NamedTuple):
    """A bucket's identity through the pipeline: (market, symbol, bucket start in µs). A tuple,
    so it unpacks, hashes and compares as the (market, symbol, start) triples it replaces."""

    market: str
    symbol: str
    start_us: int
