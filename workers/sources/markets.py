"""What a trade's quantity means on each market, and what its quote (notional) is.

Spot and USDⓈ-M quote quantities in the base asset (BTC): the notional is price × quantity.
COIN-M (`cm`) is contract-denominated: Binance's `qty` (files) and `q` (stream) count contracts
of a fixed USD face value. There the stored `quantity` is the number of contracts (exactly what
both sources carry) and `quote_quantity` the USD notional, contracts × contract size — never
price × contracts. The contract sizes are Binance's contract specifications, kept in the one
table below; a COIN-M symbol it does not know is refused, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.core.errors import BadInput
from workers.core.ticks import check_market, printable

if TYPE_CHECKING:
    import pyarrow as pa

# COIN-M contract size in USD by symbol (perpetual `_PERP` or delivery `_YYMMDD`); first match
# wins. Binance: BTCUSD contracts are 100 USD, every other coin-margined contract 10 USD.
COIN_M_CONTRACT_USD: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"^BTCUSD_(?:PERP|\d{6})$"), 100),
    (re.compile(r"^[A-Z0-9]{2,20}USD_(?:PERP|\d{6})$"), 10),
)


@dataclass(frozen=True)
class Instrument:
    """A (market, symbol) with its quantity semantics."""

    market: str
    symbol: str
    contract_usd: int | None = None  # COIN-M: USD face value of one contract

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


def contract_usd(symbol: str) -> int | None:
    """A COIN-M symbol's contract size in USD, or None when the table does not know it."""
    for pattern, usd in COIN_M_CONTRACT_USD:
        if pattern.match(symbol):
            return usd
    return None


def instrument(market: str, symbol: str) -> Instrument:
    """The instrument of a market's symbol; BadInput (exit 2) for a COIN-M symbol whose
    contract size is not known (its notional cannot be computed)."""
    check_market(market)
    if market != "cm":
        return Instrument(market, symbol)
    usd = contract_usd(symbol)
    if usd is None:
        raise BadInput(f"unknown COIN-M symbol {printable(symbol)[:40]!r}: its contract size is "
                       "not known (COIN-M symbols are <COIN>USD_PERP or <COIN>USD_<YYMMDD>; "
                       "workers/sources/markets.py COIN_M_CONTRACT_USD)")
    return Instrument(market, symbol, usd)
