"""Binance trade dump files: open (.zip verified against .CHECKSUM, or .csv), detect, stream.

Layouts (DESIGN.md): spot `trades` — id, price, qty, quote_qty, time, is_buyer_maker,
is_best_match, no header; futures `trades` — the same first six columns with a header;
`aggTrades` — agg_trade_id, price, quantity, first_trade_id, last_trade_id, transact_time,
is_buyer_maker[, is_best_match], with or without header.

Every column is read as text and converted by `workers.validate`, so one bad value quarantines
its row instead of failing the file. Batches stream from the (possibly zipped) file: memory stays
flat however large it is.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from workers.core.errors import BadInput

BLOCK_SIZE = 8 << 20  # bytes per parsed block: ~150k rows, a few tens of MB of Arrow memory


class BadFile(BadInput):
    """The file is not a usable trade file; the message names it and says why (exit 2)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Layout:
    kind: str  # "trades" | "aggTrades"
    columns: tuple[str, ...]  # names of the file's columns, in order
    id_col: str
    qty_col: str
    time_col: str
    quote_col: str | None


SPOT_TRADES = Layout("trades", ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker",
                                "is_best_match"), "id", "qty", "time", "quote_qty")
FUT_TRADES = Layout("trades", SPOT_TRADES.columns[:6], "id", "qty", "time", "quote_qty")
AGG_COLUMNS = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id",
               "transact_time", "is_buyer_maker", "is_best_match")
SPOT_AGG = Layout("aggTrades", AGG_COLUMNS, "agg_trade_id", "quantity", "transact_time", None)
FUT_AGG = Layout("aggTrades", AGG_COLUMNS[:7], "agg_trade_id", "quantity", "transact_time", None)

_TS = re.compile(rb"^\d{10,19}$")
_SYMBOL = re.compile(r"^([A-Z0-9]{2,32}?)(?:_PERP)?-(?:trades|aggTrades)-")


@dataclass(frozen=True)
class InvalidRow:
    """A line pyarrow could not split into the layout's columns (quarantined, never dropped)."""

    line: int
    reason: str
    text: str


@dataclass(frozen=True)
class RawBatch:
    """One parsed block of a dump: text columns, where it starts, and its unsplittable lines."""

    columns: pa.RecordBatch
    start: int  # index of its first row among all rows read
    invalid: list[InvalidRow]


@dataclass
class TradeFile:
    path: Path
    layout: Layout
    header: bool
    symbol: str
    sha256: str | None  # of the zip when verified against its CHECKSUM file
    # File lines of the invalid rows seen so far, ascending: for line numbers of later rows.
    _invalid_lines: list[int] = field(default_factory=list, repr=False)

    def batches(self, block_size: int = BLOCK_SIZE) -> Iterator[RawBatch]:
        """The file in blocks of text columns; memory stays flat however large it is."""
        n_cols = len(self.layout.columns)
        found: list[InvalidRow] = []

        def on_invalid(row) -> str:
            found.append(InvalidRow(row.number or -1,
                                    f"wrong column count: {row.actual_columns}, expected {n_cols}",
                                    (row.text or "")[:500]))
            return "skip"

        reader = pacsv.open_csv(
            _open_csv(self.path),
            read_options=pacsv.ReadOptions(
                column_names=list(self.layout.columns), skip_rows=1 if self.header else 0,
                block_size=block_size, use_threads=False),
            # No quoting in Binance dumps; empty lines are kept so line numbers stay exact.
            parse_options=pacsv.ParseOptions(quote_char=False, ignore_empty_lines=False,
                                              invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in self.layout.columns},
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        emitted = 0
        try:
            for batch in reader:
                invalid, found[:] = list(found), []
                self._invalid_lines.extend(r.line for r in invalid)
                yield RawBatch(batch, emitted, invalid)
                emitted += batch.num_rows
        except (pa.ArrowInvalid, zipfile.BadZipFile, EOFError, OSError) as e:
            raise BadFile(self.path, f"unreadable after {emitted} rows: {e}") from e
        if found:  # lines reported after the last block
            self._invalid_lines.extend(r.line for r in found)
            yield RawBatch(pa.RecordBatch.from_pylist([], schema=pa.schema(
                [(c, pa.string()) for c in self.layout.columns])), emitted, list(found))

    def line_of(self, k: int) -> int:
        """File line number of the k-th row read (0-based), accounting for invalid lines."""
        line = k + (2 if self.header else 1)
        for s in self._invalid_lines:  # ascending: the reader reports them in file order
            if 0 < s <= line:
                line += 1
        return line


def open_trade_file(path: str | Path, symbol: str | None = None) -> TradeFile:
    """Open and identify a dump; raises BadFile with the reason when it is not a trade file."""
    path = Path(path)
    if not path.exists():
        raise BadFile(path, "no such file")
    if path.stat().st_size == 0:
        raise BadFile(path, "empty file")
    sha = _verify_checksum(path) if path.suffix == ".zip" else None
    with _open_csv(path) as f:
        head = f.read(64 * 1024)
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    lines = [ln.rstrip(b"\r") for ln in head.split(b"\n") if ln.strip()]
    if not lines:
        raise BadFile(path, "no rows (empty CSV)")
    first = lines[0].decode("utf-8", "replace").strip()
    header = bool(first) and not first[0].isdigit()
    if header:
        names = tuple(c.strip().lower() for c in first.split(","))
        layout = _layout_from_header(path, names)
        if len(lines) < 2:
            raise BadFile(path, "header only, no rows")
    else:
        layout = _layout_from_row(path, lines[0].split(b","))
    sym = symbol or _symbol_from_name(path)
    if not sym:
        raise BadFile(path, "cannot tell the symbol from the file name; pass --symbol")
    if symbol and _symbol_from_name(path) and _symbol_from_name(path) != symbol:
        raise BadFile(path, f"--symbol {symbol} contradicts the file name "
                            f"({_symbol_from_name(path)})")
    return TradeFile(path, layout, header, sym.upper(), sha)


def _layout_from_header(path: Path, names: tuple[str, ...]) -> Layout:
    for layout in (FUT_TRADES, SPOT_TRADES, FUT_AGG, SPOT_AGG):
        if names == layout.columns:
            return layout
    raise BadFile(path, f"not a Binance trades/aggTrades file: header {','.join(names)}")


def _layout_from_row(path: Path, cells: list[bytes]) -> Layout:
    cells = [c.strip() for c in cells]
    if len(cells) == 7 and _TS.match(cells[4]):
        return SPOT_TRADES
    if len(cells) == 6 and _TS.match(cells[4]):
        return FUT_TRADES
    if len(cells) == 8 and _TS.match(cells[5]):
        return SPOT_AGG
    if len(cells) == 7 and _TS.match(cells[5]):
        return FUT_AGG
    raise BadFile(path, f"not a Binance trades/aggTrades file: first row has {len(cells)} "
                        "columns in no known layout")


def _symbol_from_name(path: Path) -> str | None:
    m = _SYMBOL.match(path.name)
    return m.group(1) if m else None


def _open_csv(path: Path) -> io.BufferedIOBase:
    if path.suffix != ".zip":
        return open(path, "rb")
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise BadFile(path, f"not a valid zip ({e})") from e
    members = [i for i in z.infolist() if not i.is_dir()]
    csvs = [i for i in members if i.filename.lower().endswith(".csv")]
    if len(csvs) != 1 or len(members) != 1:
        raise BadFile(path, f"a Binance zip holds exactly one CSV; this one holds "
                            f"{[i.filename for i in members]}")
    return z.open(csvs[0])


def _verify_checksum(path: Path) -> str:
    """SHA-256 of the zip; checked against `<zip>.CHECKSUM` when that file sits beside it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    cs = path.with_name(path.name + ".CHECKSUM")
    if cs.exists():
        parts = cs.read_text(errors="replace").split()
        if not parts or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            raise BadFile(path, f"{cs.name} is not a `<sha256>  <name>` checksum file")
        if parts[0].lower() != digest:
            raise BadFile(path, f"checksum mismatch: {cs.name} says {parts[0].lower()}, "
                                f"the file is {digest}")
    # A truncated zip fails here rather than halfway through the rows.
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise BadFile(path, f"not a valid zip ({e})") from e
    if bad is not None:
        raise BadFile(path, f"corrupt zip member {bad}")
    return digest
