"""Row validation, vectorised: text columns in, typed accepted rows + quarantined rows out.

A row is quarantined (with its reason) when it cannot be parsed, its price or quantity is not a
positive finite decimal with at most 8 places, its timestamp is before Binance's first trades or
more than the clock-skew tolerance ahead of now (`future_time`), or in another unit than the rest
of its file, its boolean is not True/False, or its symbol differs; on a contract-denominated
market (COIN-M) also when its quantity is not a whole number of contracts or the file's base
quantity disagrees with contracts × contract size / price. Nothing is silently dropped: every
input row is either accepted or quarantined. The quote quantity is the instrument's notional
(workers/core/markets.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workers.core.markets import Instrument
from workers.core.settings import default
from workers.core.ticks import TICK_SCHEMA

# Below 10^10 with at most 8 places: fits numeric(24,8) and an exact price x quantity.
DECIMAL = r"^[0-9]{1,10}(\.[0-9]{1,8})?$"
INTEGER = r"^[0-9]{1,18}$"
# Binance spot opened in July 2017; nothing real is older.
MIN_TIME_US = 1_498_867_200_000_000  # 2017-07-01
# A trade time ahead of this machine's clock by more than this is quarantined (`future_time`):
# clock skew between the exchange and us, never a day (TICKSTACK_FUTURE_TOLERANCE_SECONDS).
DEFAULT_FUTURE_TOLERANCE_US = int(default("future_tolerance_seconds") * 1_000_000)
WHOLE = r"^[0-9]{1,10}(\.0{1,8})?$"  # a whole number of contracts
SPOT_BASE = Instrument("spot", "")  # quantity in the base asset: quote = price x quantity


def too_old_reason() -> str:
    return "timestamp before 2017-07-01 (older than any Binance trade)"


def future_reason(tolerance_us: int) -> str:
    """The one quarantine reason of a trade too far ahead of the clock (constant per run, so
    quarantine counts group by it)."""
    return (f"future_time: trade time more than {tolerance_us / 1e6:g} s ahead of this "
            "machine's clock (TICKSTACK_FUTURE_TOLERANCE_SECONDS)")


@dataclass
class UnitState:
    """The timestamp unit of one file (ms until 2024, µs from 2025), fixed by its first row."""

    unit: str | None = None  # "ms" | "us"


def _unit_of(digits: int) -> str | None:
    return {13: "ms", 16: "us"}.get(digits)


def _plausible_unit(t: pa.Array, digits: np.ndarray, candidates: np.ndarray,
                    latest_us: int) -> str | None:
    """The file's unit, from its first row whose time is plausible in the unit its magnitude
    says (between Binance's first trades and the future tolerance): a first row that is itself
    wrong — a day ahead, or in the other unit — is quarantined alone, it does not make every
    other row of the file "another unit". None when no row is plausible."""
    rows = np.flatnonzero(candidates & ((digits == 13) | (digits == 16)))
    if not len(rows):
        return None
    values = np.asarray(pc.cast(pc.take(t, pa.array(rows)), pa.int64()).to_numpy(
        zero_copy_only=False))
    us = np.where(digits[rows] == 13, values * 1000, values)
    ok = np.flatnonzero((us >= MIN_TIME_US) & (us <= latest_us))
    return _unit_of(int(digits[rows[ok[0]]])) if len(ok) else None


def validate(cols: dict[str, pa.Array], units: UnitState, *, symbol: str | None = None,
             now_us: int | None = None, flagged: dict[int, str] | None = None,
             instrument: Instrument = SPOT_BASE,
             future_us: int = DEFAULT_FUTURE_TOLERANCE_US
             ) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """Returns (accepted ticks, their row positions in the input, [(position, reason)]).
    `flagged`: rows the reader already knows are bad, with their reason. `instrument` says
    what the quantity is and gives the quote (a contract market's file quote is not used);
    `future_us`: how far ahead of now a trade time may be."""
    if not flagged and symbol is None and units.unit is not None:
        clean = _clean(cols, units, now_us, instrument, future_us)
        if clean is not None:
            return clean, np.arange(len(cols["trade_id"])), []
    return validate_rows(cols, units, symbol=symbol, now_us=now_us, flagged=flagged,
                         instrument=instrument, future_us=future_us)


def validate_rows(cols: dict[str, pa.Array], units: UnitState, *, symbol: str | None = None,
                  now_us: int | None = None, flagged: dict[int, str] | None = None,
                  instrument: Instrument = SPOT_BASE,
                  future_us: int = DEFAULT_FUTURE_TOLERANCE_US
                  ) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """`validate`, every check on every row (what a batch with a bad row goes through). A row
    is quarantined with the first rule it fails, in the order below."""
    cols = dict(cols)
    r = _Reasons(len(cols["trade_id"]), flagged)
    _check_text(cols, r, instrument)
    now = now_us or int(time.time() * 1_000_000)
    unit = _check_time_text(cols, r, units, now + future_us)
    bm_l = pc.utf8_lower(pc.utf8_trim_whitespace(cols["is_buyer_maker"]))
    r.flag(~_mask(pc.is_in(bm_l, pa.array(["true", "false"]))), "unknown boolean text")
    if symbol is not None and "symbol" in cols:
        r.flag(~_mask(pc.equal(cols["symbol"], symbol)), f"different symbol (expected {symbol})")
    return _convert_and_check_values(cols, r, unit, bm_l, instrument, now + future_us, future_us)


class _Reasons:
    """Each input row's quarantine reason: the first rule it failed (None: none so far)."""

    def __init__(self, n: int, flagged: dict[int, str] | None):
        self.reason = np.full(n, None, dtype=object)
        for i, why in (flagged or {}).items():
            self.reason[i] = why

    def open(self) -> np.ndarray:
        return self.reason == None  # noqa: E711 - elementwise comparison on an object array

    def flag(self, mask: np.ndarray, why: str) -> None:
        self.reason[mask & self.open()] = why


def _mask(a) -> np.ndarray:
    return np.asarray(a.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _check_text(cols: dict[str, pa.Array], r: _Reasons, instrument: Instrument) -> None:
    """Empty lines, the trade id, and the decimal columns' text (trimmed in `cols`); a contract
    market's quantity is whole contracts and its file quote is dropped (it follows from them)."""
    all_empty = np.ones(len(r.reason), dtype=bool)
    for a in cols.values():
        all_empty &= _mask(pc.equal(pc.utf8_length(a), 0))
    r.flag(all_empty, "empty line")
    r.flag(~_mask(pc.match_substring_regex(cols["trade_id"], INTEGER)),
           "trade id is not a non-negative integer")
    for name, label in (("price", "price"), ("quantity", "quantity")):
        a = pc.utf8_trim_whitespace(cols[name])
        lower = pc.utf8_lower(a)
        r.flag(_mask(pc.is_in(lower, pa.array(["nan", "inf", "-inf", "+inf", "infinity",
                                                "-infinity"]))), f"non-finite {label}")
        r.flag(_mask(pc.starts_with(a, "-")), f"negative {label}")
        r.flag(~_mask(pc.match_substring_regex(a, DECIMAL)), f"non-numeric {label}")
        cols[name] = a
    if instrument.contract_usd is not None:
        r.flag(~_mask(pc.match_substring_regex(cols["quantity"], WHOLE)),
               "quantity is not a whole number of contracts")
        cols.pop("quote_quantity", None)  # the notional follows from the contracts
    if "quote_quantity" in cols:
        r.flag(~_mask(pc.match_substring_regex(cols["quote_quantity"], DECIMAL)),
               "non-numeric quote quantity")
    if "base_quantity" in cols:
        cols["base_quantity"] = pc.utf8_trim_whitespace(cols["base_quantity"])
        r.flag(~_mask(pc.match_substring_regex(cols["base_quantity"], DECIMAL)),
               "non-numeric base quantity")


def _check_time_text(cols: dict[str, pa.Array], r: _Reasons, units: UnitState,
                     latest_us: int) -> str | None:
    """The timestamp's text: digits, in ms or µs, in the file's unit (fixed here by its first
    plausible row). Returns the unit this batch is read in."""
    t = pc.utf8_trim_whitespace(cols["time"])
    t_ok = _mask(pc.match_substring_regex(t, r"^[0-9]{1,19}$"))
    r.flag(~t_ok, "non-numeric timestamp")
    digits = np.asarray(pc.utf8_length(t).to_numpy(zero_copy_only=False))
    unit = units.unit
    if unit is None:
        candidates = t_ok & r.open()
        units.unit = unit = _plausible_unit(t, digits, candidates, latest_us)
        if unit is None:  # no plausible row yet: this batch is read in its first row's unit
            unit = next((_unit_of(int(digits[i])) for i in np.flatnonzero(candidates)), None)
    r.flag(t_ok & (digits <= 11), "timestamp in seconds (too small for ms or µs)")
    r.flag(t_ok & (digits >= 18), "timestamp in nanoseconds (too large for ms or µs)")
    r.flag(t_ok & (digits != 13) & (digits != 16), "timestamp magnitude is neither ms nor µs")
    if unit:
        other = 16 if unit == "ms" else 13
        r.flag(t_ok & (digits == other),
               f"timestamp unit differs from the file's ({'µs' if other == 16 else 'ms'} "
               f"in a {unit} file)")
    return unit


def _convert_and_check_values(cols: dict[str, pa.Array], r: _Reasons, unit: str | None,
                              bm_l: pa.Array, instrument: Instrument, latest_us: int,
                              future_us: int) -> tuple[pa.Table, np.ndarray,
                                                       list[tuple[int, str]]]:
    """Convert the rows whose text passed, then the checks that need numbers: positive price
    and quantity, a time from Binance's first trades to `latest_us`, a contract market's base
    quantity. Returns (accepted ticks, their input positions, [(position, reason)])."""
    idx = pa.array(np.flatnonzero(r.open()))
    take = {k: pc.take(v, idx) for k, v in cols.items()}
    price = pc.cast(take["price"], pa.decimal128(24, 8))
    qty = pc.cast(take["quantity"], pa.decimal128(24, 8))
    raw_t = pc.cast(pc.utf8_trim_whitespace(take["time"]), pa.int64())
    t_us = pc.multiply(raw_t, 1000) if unit == "ms" else raw_t
    if "quote_quantity" in take:
        quote = pc.cast(take["quote_quantity"], pa.decimal128(32, 8))
    else:
        quote = instrument.quote(price, qty)
    zero = pa.scalar(0, pa.decimal128(24, 8))
    t_np = raw_t.to_numpy() * (1000 if unit == "ms" else 1)
    bad_base = np.zeros(len(idx), dtype=bool)
    base_why = "base quantity disagrees with the quantity"
    if "base_quantity" in take and instrument.contract_usd is not None:
        bad_base = _base_disagrees(price, qty, take["base_quantity"], instrument.contract_usd)
        base_why = (f"base_qty disagrees with qty x {instrument.contract_usd} USD / price "
                    f"(the contract size of {instrument.symbol})")
    sub_ok = np.ones(len(idx), dtype=bool)
    positions = idx.to_numpy()
    for mask, why in ((_mask(pc.less_equal(price, zero)), "zero price"),
                      (_mask(pc.less_equal(qty, zero)), "zero quantity"),
                      (t_np < MIN_TIME_US, too_old_reason()),
                      (t_np > latest_us, future_reason(future_us)),
                      (bad_base, base_why)):
        hit = mask & sub_ok
        r.reason[positions[hit]] = why
        sub_ok &= ~hit
    keep = pa.array(np.flatnonzero(sub_ok))
    table = pa.table({
        "trade_id": pc.take(pc.cast(take["trade_id"], pa.int64()), keep),
        "event_time": pc.take(pc.cast(t_us, pa.timestamp("us", tz="UTC")), keep),
        "price": pc.take(price, keep),
        "quantity": pc.take(qty, keep),
        "quote_quantity": pc.take(quote, keep),
        "is_buyer_maker": pc.take(pc.equal(pc.take(bm_l, idx), "true"), keep),
        "trade_kind": pa.nulls(len(keep), pa.string()),
    }, schema=TICK_SCHEMA)
    bad = [(int(i), str(r.reason[i])) for i in np.flatnonzero(~r.open())]
    return table, positions[sub_ok], bad


BOOLEANS = pa.array(["True", "False", "true", "false"])


def _base_disagrees(price: pa.Array, contracts: pa.Array, base: pa.Array, usd: int
                    ) -> np.ndarray:
    """Rows whose base quantity is not contracts x usd / price up to its 8 places (Binance
    truncates it; a wrong contract size is off by a factor, far beyond this)."""
    p = np.asarray(pc.cast(price, pa.float64()).to_numpy(zero_copy_only=False))
    n = np.asarray(pc.cast(contracts, pa.float64()).to_numpy(zero_copy_only=False))
    b = np.asarray(pc.cast(pc.cast(base, pa.decimal128(24, 8)), pa.float64())
                   .to_numpy(zero_copy_only=False))
    return np.abs(b * p - n * usd) > p * 2e-8 + 1e-9


def _clean(cols: dict[str, pa.Array], units: UnitState, now_us: int | None,
           instrument: Instrument, future_us: int) -> pa.Table | None:
    """The ticks of a batch in which every row is plainly good — each value exactly in the
    form the checks above accept without trimming — or None: then the batch goes through them
    row by row. Almost every batch of a real dump is clean, and this costs a fraction of the
    full checks (one pattern a column, no trimming, no lower-casing), with the same result."""
    def all_true(a) -> bool:
        return a.null_count == 0 and pc.all(a).as_py() is not False

    digits = 13 if units.unit == "ms" else 16
    checks = [(cols["trade_id"], INTEGER), (cols["price"], DECIMAL),
              (cols["quantity"], DECIMAL), (cols["time"], f"^[0-9]{{{digits}}}$")]
    contracts = instrument.contract_usd is not None
    if contracts:
        checks.append((cols["quantity"], WHOLE))
        if "base_quantity" in cols:
            checks.append((cols["base_quantity"], DECIMAL))
    elif "quote_quantity" in cols:
        checks.append((cols["quote_quantity"], DECIMAL))
    for a, pattern in checks:
        if not all_true(pc.match_substring_regex(a, pattern)):
            return None
    if not all_true(pc.is_in(cols["is_buyer_maker"], BOOLEANS)):
        return None
    price = pc.cast(cols["price"], pa.decimal128(24, 8))
    qty = pc.cast(cols["quantity"], pa.decimal128(24, 8))
    zero = pa.scalar(0, pa.decimal128(24, 8))
    if not (all_true(pc.greater(price, zero)) and all_true(pc.greater(qty, zero))):
        return None
    raw_t = pc.cast(cols["time"], pa.int64())
    t_us = pc.multiply(raw_t, 1000) if units.unit == "ms" else raw_t
    now = now_us or int(time.time() * 1_000_000)
    lo, hi = pc.min_max(t_us).values()
    if lo.as_py() < MIN_TIME_US or hi.as_py() > now + future_us:
        return None
    if contracts and "base_quantity" in cols and _base_disagrees(
            price, qty, cols["base_quantity"], instrument.contract_usd).any():
        return None
    quote = (pc.cast(cols["quote_quantity"], pa.decimal128(32, 8))
             if "quote_quantity" in cols and not contracts else instrument.quote(price, qty))
    return pa.table({
        "trade_id": pc.cast(cols["trade_id"], pa.int64()),
        "event_time": pc.cast(t_us, pa.timestamp("us", tz="UTC")),
        "price": price,
        "quantity": qty,
        "quote_quantity": quote,
        "is_buyer_maker": pc.is_in(cols["is_buyer_maker"], pa.array(["True", "true"])),
        "trade_kind": pa.nulls(len(price), pa.string()),
    }, schema=TICK_SCHEMA)
