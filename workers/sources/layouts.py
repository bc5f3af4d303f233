"""What a Binance dump file is, before a row of it is read: its layout (from its header or its
rows' shape), its market (the archive path or the caller, checked against the columns), its
symbol (the file name) — and the refusals: aggTrades, by columns or by name, are never read as
trades (their ids are another sequence; one aggregate stands for several trades).
"""

from __future__ import annotations

import re
from pathlib import Path

from workers.core.errors import BadInput, printable
from workers.core.markets import (
    ARCHIVE_MARKET_PATHS,
    BY_NAME,
    FUT_TRADES,
    SPOT_TRADES,
    Layout,
    check_market,
)


class BadFile(BadInput):
    """The file is not a usable trade file; the message names it and says why (exit 2)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{printable(str(path))}: {printable(reason)}")
        self.path = str(path)
        self.reason = reason


TRADES_OF_MARKET = {m.name: m.trades for m in BY_NAME.values()}
AGG_COLUMNS = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id",
               "transact_time", "is_buyer_maker", "is_best_match")
SPOT_AGG = Layout("aggTrades", AGG_COLUMNS, "agg_trade_id", "quantity", "transact_time", None)
FUT_AGG = Layout("aggTrades", AGG_COLUMNS[:7], "agg_trade_id", "quantity", "transact_time", None)
# What a headerless row looks like: (columns, where the timestamp is, where the booleans are).
_ROW_SHAPES = ((SPOT_TRADES, 7, 4, (5, 6)), (FUT_TRADES, 6, 4, (5,)),
               (SPOT_AGG, 8, 5, (6, 7)), (FUT_AGG, 7, 5, (6,)))
INGESTIBLE_KINDS = ("trades",)

_TS = re.compile(rb"^\d{10,19}$")
_BOOL = re.compile(rb"^(?:true|false)$", re.IGNORECASE)
_SYMBOL = re.compile(r"^([A-Z0-9_]{2,32})-(?:trades|aggTrades)-")
_AGG_NAME = re.compile(r"-aggtrades-|^aggtrades", re.IGNORECASE)
# Where the archive keeps each market's files (data/<market path>/<daily|monthly>/...) is the
# registry's ARCHIVE_MARKET_PATHS; the fetcher lays its cache out by the same table.
_MARKET_DIRS = {tuple(p.split("/")): m for m, p in ARCHIVE_MARKET_PATHS.items()}


def refuse_aggregates(path: Path, layout: Layout, header: bool, member: str | None = None
                      ) -> None:
    """aggTrades, by columns or by name (the file's, or the CSV's inside a zip), are never read
    as trades (exit 2, saying why)."""
    why = ("aggregate trades are not ingested: an aggregate trade id is another sequence than "
           "a trade id and one aggregate stands for several trades, so storing them beside the "
           "trades would double counts and volumes; ingest the day's `trades` file instead "
           "(`workers fetch --kind trades`)")
    if layout.kind == "aggTrades":
        raise BadFile(path, f"an aggTrades file ({'header' if header else 'rows'} of "
                            f"{len(layout.columns)} columns {','.join(layout.columns)}): {why}")
    name = Path(member).name if member is not None else path.name
    if _AGG_NAME.search(name):
        named = f"its CSV {printable(name)!r} is" if member is not None else "it is"
        raise BadFile(path, f"{named} named as an aggTrades file (its columns are trades', the "
                            f"name contradicts them): {why}")


def check_ingestible(kind: str) -> str:
    """Only `trades` files are ingested (see _refuse_aggregates); BadInput otherwise."""
    if kind not in INGESTIBLE_KINDS:
        raise BadInput(f"--kind {printable(kind)[:20]} cannot be ingested: only trades files "
                       "are (aggregate trades are another dataset: their ids are another "
                       "sequence); fetch them without --ingest, or fetch --kind trades")
    return kind


def market_from_path(path: Path) -> str | None:
    """The market an archive path names (`.../data/futures/um/daily/trades/...`), if any."""
    parts = path.resolve().parts
    found = {m for dirs, m in _MARKET_DIRS.items()
             for i in range(len(parts) - len(dirs) + 1) if parts[i:i + len(dirs)] == dirs}
    return found.pop() if len(found) == 1 else None  # naming two markets names none


def market_of(path: Path, layout: Layout, given: str | None) -> str:
    """The market from the caller or the archive path, checked against the columns."""
    from_path = market_from_path(path)
    if given and from_path and given != from_path:
        raise BadFile(path, f"--market {given} contradicts the archive path ({from_path})")
    market = given or from_path
    futures = [m for m in BY_NAME.values() if m.futures]
    futures_layout = layout in {m.trades for m in futures}
    if market is None:
        own = [m for m in futures if m.trades is layout and m.trades.base_col]
        if len(own) == 1:  # only one market has these columns (COIN-M's base_qty)
            raise BadFile(path, f"{own[0].short} columns ({layout.base_col}), but neither the "
                                f"path nor --market says the market: pass --market {own[0].name}")
        if futures_layout:
            raise BadFile(path, "futures columns (a header, no is_best_match), but neither the "
                                "path nor --market says which futures market: pass --market "
                                f"{' or '.join(m.name for m in futures)}")
        return next(m.name for m in BY_NAME.values() if not m.futures)
    if BY_NAME[check_market(market)].futures != futures_layout:
        raise BadFile(path, f"the columns are a {'futures' if futures_layout else 'spot'} "
                            f"file's, but the market is {market}: two markets are never mixed")
    return market


def layout_from_header(path: Path, names: tuple[str, ...]) -> Layout:
    for layout in (*TRADES_OF_MARKET.values(), FUT_AGG, SPOT_AGG):  # distinct columns each
        if names == layout.columns:
            return layout
    raise BadFile(path, f"not a Binance trades/aggTrades file: header {','.join(names)}")


def layout_from_rows(path: Path, lines: list[bytes]) -> Layout:
    """The layout of headerless rows, from the first row of a known shape: its column count,
    a timestamp where the layout has one and booleans where it has them (so a trades row and
    an aggTrades row of the same width are told apart). Any aggTrades-shaped row decides."""
    found: list[Layout] = []
    for line in lines:
        cells = [c.strip() for c in line.split(b",")]
        for layout, n, ts, bools in _ROW_SHAPES:
            if len(cells) == n and _TS.match(cells[ts]) and all(_BOOL.match(cells[i])
                                                                 for i in bools):
                found.append(layout)
    agg = [la for la in found if la.kind == "aggTrades"]
    if agg or found:
        return (agg or found)[0]
    cells = [c.strip() for c in lines[0].split(b",")]
    # No row has the booleans of a layout (bad rows are quarantined one by one): the width and
    # where the timestamp is still tell the layout.
    for layout, n, ts, _ in _ROW_SHAPES:
        if len(cells) == n and _TS.match(cells[ts]) and not (
                ts + 1 < n and _TS.match(cells[ts + 1])):
            return layout
    raise BadFile(path, f"not a Binance trades/aggTrades file: first row has {len(cells)} "
                        "columns in no known layout")


def symbol_from_name(path: Path) -> str | None:
    m = _SYMBOL.match(path.name)
    return m.group(1) if m else None
