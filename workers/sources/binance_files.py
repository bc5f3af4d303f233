"""Binance trade dump files: open (.zip verified against .CHECKSUM, or .csv), detect, stream.

Layouts (DESIGN.md): spot `trades` — id, price, qty, quote_qty, time, is_buyer_maker,
is_best_match, no header; USDⓈ-M `trades` — the same first six columns with a header; COIN-M
`trades` — id, price, qty, base_qty, time, is_buyer_maker with a header (qty in contracts,
base_qty in the coin; workers/core/markets.py says what is stored).

`aggTrades` files (agg_trade_id, price, quantity, first_trade_id, last_trade_id, transact_time,
is_buyer_maker[, is_best_match]) are refused (exit 2): an aggregate trade id is another sequence
than a trade id and one aggregate stands for several trades, so storing them beside the trades
would double counts and volumes. They are recognised by name (`-aggTrades-`) and by columns
(a header, or a first row's shape: where the timestamp and the booleans sit), so a renamed one
does not pass as trades.

Every column is read as text and converted by `workers.sources.validate`, so one bad value
quarantines its row instead of failing the file — bytes that are not UTF-8 included. Batches
stream from the (possibly zipped) file: memory stays flat however large it is, and a zip that
expands more than `max_ratio` times its size, or beyond `max_bytes`, fails as a likely zip bomb.

The market (spot, USDⓈ-M `um`, COIN-M `cm`) is never guessed from the symbol: it comes from the
archive path (`.../spot/...`, `.../futures/um/...`, `.../futures/cm/...`) or the caller, with the
file's columns as a cross-check (spot trades: 7 columns, no header; futures: a header and 6,
`quote_qty` on USDⓈ-M, `base_qty` on COIN-M).
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from workers.core.errors import BadInput
from workers.core.markets import Instrument, check_symbol, instrument
from workers.core.settings import IngestSettings, default
from workers.sources.layouts import (
    FUT_TRADES,
    TRADES_OF_MARKET,
    BadFile,
    Layout,
    check_ingestible,
    layout_from_header,
    layout_from_rows,
    market_of,
    refuse_aggregates,
    symbol_from_name,
)

if TYPE_CHECKING:  # pyarrow loads when a file's rows are read: identifying one needs none
    import pyarrow as pa

    from workers.sources import validate as checks

# Re-exported: callers (the archive client, the CLI) import them from here.
__all__ = ["BadFile", "Limits", "RawBatch", "TradeFile", "check_ingestible",
           "open_trade_file", "parse_checksum", "sha256_file"]

BLOCK_SIZE = 8 << 20  # bytes per parsed block: ~150k rows, a few tens of MB of Arrow memory


@dataclass(frozen=True)
class Limits:
    """Caps on what one file may make the reader hold or expand (settings give them)."""

    # uncompressed / compressed: Binance dumps are ~4-6x
    max_ratio: float = default("ingest_max_zip_ratio")
    max_bytes: int = default("ingest_max_file_bytes")  # uncompressed bytes of one file
    # How far ahead of this machine's clock a trade time may be (clock skew), µs.
    future_us: int = int(default("future_tolerance_seconds") * 1_000_000)

    @classmethod
    def of(cls, s: IngestSettings) -> Limits:
        return cls(s.max_zip_ratio, s.max_file_bytes, int(s.future_tolerance_seconds * 1_000_000))


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
    # Rows (index in this batch) whose bytes are not UTF-8, with their text made readable: their
    # values in `columns` are blanked, the caller quarantines them.
    bad_utf8: dict[int, str] = field(default_factory=dict)


@dataclass
class TradeFile:
    path: Path
    layout: Layout
    header: bool
    symbol: str
    sha256: str  # of the file as it is (a zip: checked against its CHECKSUM file if any)
    market: str = "spot"
    limits: Limits = Limits()
    instrument: Instrument = Instrument("spot", "")  # validate.SPOT_BASE
    # File lines of the invalid rows seen so far, ascending: for line numbers of later rows.
    _invalid_lines: list[int] = field(default_factory=list, repr=False)

    def batches(self, block_size: int = BLOCK_SIZE) -> Iterator[RawBatch]:
        """The file in blocks of text columns; memory stays flat however large it is."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        n_cols = len(self.layout.columns)
        found: list[InvalidRow] = []

        def on_invalid(row) -> str:
            found.append(InvalidRow(row.number or -1,
                                    f"wrong column count: {row.actual_columns}, expected {n_cols}",
                                    (row.text or "")[:500]))
            return "skip"

        reader = pacsv.open_csv(
            _open_csv(self.path, self.limits),
            read_options=pacsv.ReadOptions(
                column_names=list(self.layout.columns), skip_rows=1 if self.header else 0,
                block_size=block_size, use_threads=False),
            # No quoting in Binance dumps; empty lines are kept so line numbers stay exact.
            parse_options=pacsv.ParseOptions(quote_char=False, ignore_empty_lines=False,
                                              invalid_row_handler=on_invalid),
            # UTF-8 is checked per row below: one bad byte is one bad row, not a bad file.
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in self.layout.columns},
                strings_can_be_null=False, quoted_strings_can_be_null=False,
                check_utf8=False),
        )
        emitted = 0
        try:
            for batch in reader:
                invalid, found[:] = list(found), []
                self._invalid_lines.extend(r.line for r in invalid)
                batch, bad_utf8 = _without_bad_utf8(batch)
                yield RawBatch(batch, emitted, invalid, bad_utf8)
                emitted += batch.num_rows
        except BadFile:
            raise
        except (pa.ArrowInvalid, zipfile.BadZipFile, EOFError, OSError) as e:
            raise BadFile(self.path, f"unreadable after {emitted} rows: {e}") from e
        if found:  # lines reported after the last block
            self._invalid_lines.extend(r.line for r in found)
            yield RawBatch(pa.RecordBatch.from_pylist([], schema=pa.schema(
                [(c, pa.string()) for c in self.layout.columns])), emitted, list(found))

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """A parsed block's text columns under the names `validate` checks."""
        lay = self.layout
        cols = {"trade_id": batch.column(lay.id_col), "price": batch.column("price"),
                "quantity": batch.column(lay.qty_col), "time": batch.column(lay.time_col),
                "is_buyer_maker": batch.column("is_buyer_maker")}
        if lay.quote_col:
            cols["quote_quantity"] = batch.column(lay.quote_col)
        if lay.base_col:
            cols["base_quantity"] = batch.column(lay.base_col)
        return cols

    def validate(self, batch: pa.RecordBatch, units: checks.UnitState, *,
                 flagged: dict[int, str] | None = None, now_us: int | None = None):
        """A parsed block through `workers.sources.validate.validate` with this file's quantity
        semantics (a COIN-M notional is contracts x contract size, its base_qty cross-checked)
        and its limits (the clock-skew tolerance): (ticks, their positions, [(pos, reason)])."""
        from workers.sources import validate as checks

        return checks.validate(self.columns(batch), units, flagged=flagged, now_us=now_us,
                               instrument=self.instrument, future_us=self.limits.future_us)

    def line_of(self, k: int) -> int:
        """File line number of the k-th row read (0-based), accounting for invalid lines."""
        line = k + (2 if self.header else 1)
        for s in self._invalid_lines:  # ascending: the reader reports them in file order
            if 0 < s <= line:
                line += 1
        return line


def open_trade_file(path: str | Path, symbol: str | None = None, market: str | None = None,
                    limits: Limits = Limits()) -> TradeFile:
    """Open and identify a dump; raises BadFile with the reason when it is not a trade file."""
    path = Path(path)
    if not path.exists():
        raise BadFile(path, "no such file")
    if path.is_dir():
        raise BadFile(path, "a directory, not a trade file")
    if not path.is_file():
        raise BadFile(path, "not a regular file")
    if path.stat().st_size == 0:
        raise BadFile(path, "empty file")
    sha = _verify_checksum(path) if path.suffix == ".zip" else sha256_file(path)
    with _open_csv(path, limits) as f:
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
        layout = layout_from_header(path, names)
        if len(lines) < 2:
            raise BadFile(path, "header only, no rows")
    else:
        layout = layout_from_rows(path, lines[:64])
    refuse_aggregates(path, layout, header)
    if path.suffix == ".zip":  # the CSV inside is named too (BTCUSDT-aggTrades-….csv)
        with zipfile.ZipFile(path) as z:
            refuse_aggregates(path, layout, header, z.namelist()[0])
    named = symbol_from_name(path)
    sym = (symbol or named or "").upper()
    if not sym:
        raise BadFile(path, "cannot tell the symbol from the file name; pass --symbol")
    try:
        check_symbol(sym)
    except BadInput as e:
        raise BadFile(path, str(e)) from None
    if symbol and named and named != symbol.upper():
        raise BadFile(path, f"--symbol {symbol} contradicts the file name ({named})")
    market = market_of(path, layout, market)
    if not header and layout is FUT_TRADES:  # six columns, no header: the market says which
        layout = TRADES_OF_MARKET[market]
    elif layout is not TRADES_OF_MARKET[market]:
        raise BadFile(path, f"header {','.join(layout.columns)} is not the {market} trades "
                            f"layout ({','.join(TRADES_OF_MARKET[market].columns)}): two "
                            "markets are never mixed")
    try:
        inst = instrument(market, sym)
    except BadInput as e:
        raise BadFile(path, str(e)) from None
    return TradeFile(path, layout, header, sym, sha, market, limits, inst)


def _open_csv(path: Path, limits: Limits = Limits()) -> io.BufferedIOBase:
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
    info = csvs[0]
    cap = min(limits.max_bytes, int(max(info.compress_size, 1) * limits.max_ratio))
    if info.file_size > cap:
        raise BadFile(path, f"expands to {info.file_size:,} bytes from {info.compress_size:,} "
                            f"({info.file_size / max(info.compress_size, 1):.0f}x; the limit is "
                            f"{limits.max_ratio:g}x and {limits.max_bytes:,} bytes): refusing a "
                            "likely zip bomb (TICKSTACK_INGEST_MAX_ZIP_RATIO / "
                            "TICKSTACK_INGEST_MAX_FILE_BYTES)")
    # The header may lie: count what actually comes out.
    return _Capped(z.open(info), path, max(info.file_size, 0), cap)


class _Capped(io.RawIOBase):
    """A zip member that fails once it yields more than its header declared or the cap."""

    def __init__(self, raw, path: Path, declared: int, cap: int):
        self.raw, self.path, self.declared, self.cap, self.n = raw, path, declared, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(len(b))
        self.n += len(data)
        if self.n > self.declared or self.n > self.cap:
            raise BadFile(self.path, f"expands past {min(self.declared, self.cap):,} bytes "
                                     "(more than its zip header declares, or than the limit): "
                                     "refusing a likely zip bomb")
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


def _without_bad_utf8(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[int, str]]:
    """Blank the values of rows whose bytes are not UTF-8 (so later string kernels only see
    valid text) and return those rows with their text, bad bytes shown as U+FFFD."""
    import pyarrow as pa

    bad: set[int] = set()
    for col in batch.columns:
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            for i, v in enumerate(col.cast(pa.binary()).to_pylist()):
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    bad.add(i)
    if not bad:
        return batch, {}
    texts = {i: ",".join(c.cast(pa.binary())[i].as_py().decode("utf-8", "replace")
                         for c in batch.columns)[:500] for i in sorted(bad)}
    mask = pa.array([i in bad for i in range(batch.num_rows)])
    cols = [_blank(c, mask) for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names), texts


def _blank(col: pa.Array, mask: pa.Array) -> pa.Array:
    """`col` with the masked values replaced by "" (built from bytes: `col` is not valid UTF-8)."""
    import pyarrow as pa

    values = col.cast(pa.binary()).to_pylist()
    m = mask.to_pylist()
    return pa.array([b"" if bad else v for v, bad in zip(values, m, strict=True)],
                    pa.binary()).cast(pa.string())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_checksum(text: str, name: str) -> str:
    """The SHA-256 a `<name>.CHECKSUM` file gives (`<sha256>  <name>`, Binance's format);
    ValueError saying what is wrong when it is not one, or names another file."""
    parts = text.split()
    if not parts or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
        raise ValueError(f"{name}.CHECKSUM is not a `<sha256>  <name>` checksum file: "
                         f"{text[:80]!r}")
    named = parts[1].lstrip("*") if len(parts) > 1 else None
    if named is not None and Path(named).name != name:
        raise ValueError(f"{name}.CHECKSUM is the checksum of {named}, not of {name}")
    return parts[0].lower()


def _verify_checksum(path: Path) -> str:
    """SHA-256 of the zip; checked against `<zip>.CHECKSUM` when that file sits beside it.

    A zip that matches its publisher's checksum is the publisher's intact file; one without a
    CHECKSUM is read through once (every member's CRC) so a truncated zip fails here rather
    than halfway through its rows. (The CRCs are checked again as the rows are read.)"""
    digest = sha256_file(path)
    cs = path.with_name(path.name + ".CHECKSUM")
    if cs.exists():
        try:
            want = parse_checksum(cs.read_text(errors="replace"), path.name)
        except ValueError as e:
            raise BadFile(path, str(e)) from None
        if want != digest:
            raise BadFile(path, f"checksum mismatch: {cs.name} says {want}, the file is {digest}")
    try:
        with zipfile.ZipFile(path) as z:
            bad = None if cs.exists() else z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise BadFile(path, f"not a valid zip ({e})") from e
    if bad is not None:
        raise BadFile(path, f"corrupt zip member {bad}")
    return digest
