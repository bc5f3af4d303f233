"""Row validation, vectorised: text columns in, typed accepted rows + quarantined rows out.

A row is quarantined (with its reason) when it cannot be parsed, its price or quantity is not a
positive finite decimal with at most 8 places, its timestamp is outside a sane range or in another
unit than the rest of its file, its boolean is not True/False, or its symbol differs. Nothing is
silently dropped: every input row is either accepted or quarantined.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workers.core.ticks import TICK_SCHEMA

# Below 10^10 with at most 8 places: fits numeric(24,8) and an exact price x quantity.
DECIMAL = r"^[0-9]{1,10}(\.[0-9]{1,8})?$"
INTEGER = r"^[0-9]{1,18}$"
# Binance spot opened in July 2017; nothing real is older or far in the future.
MIN_TIME_US = 1_498_867_200_000_000  # 2017-07-01
FUTURE_SLACK_US = 86_400_000_000


@dataclass
class UnitState:
    """The timestamp unit of one file (ms until 2024, µs from 2025), fixed by its first row."""

    unit: str | None = None  # "ms" | "us"


def _unit_of(digits: int) -> str | None:
    return {13: "ms", 16: "us"}.get(digits)


def quote_of(price: pa.Array, qty: pa.Array) -> pa.Array:
    """price x quantity, exact, then cut to 8 places (for sources that send no quote)."""
    return pc.cast(pc.multiply(pc.cast(price, pa.decimal128(18, 8)),
                               pc.cast(qty, pa.decimal128(18, 8))),
                   pa.decimal128(32, 8), safe=False)


def validate(cols: dict[str, pa.Array], units: UnitState, *, symbol: str | None = None,
             now_us: int | None = None, flagged: dict[int, str] | None = None
             ) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """Returns (accepted ticks, their row positions in the input, [(position, reason)]).
    `flagged`: rows the reader already knows are bad, with their reason."""
    if not flagged and symbol is None and units.unit is not None:
        clean = _clean(cols, units, now_us)
        if clean is not None:
            return clean, np.arange(len(cols["trade_id"])), []
    return validate_rows(cols, units, symbol=symbol, now_us=now_us, flagged=flagged)


def validate_rows(cols: dict[str, pa.Array], units: UnitState, *, symbol: str | None = None,
                  now_us: int | None = None, flagged: dict[int, str] | None = None
                  ) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """`validate`, every check on every row (what a batch with a bad row goes through)."""
    cols = dict(cols)
    n = len(cols["trade_id"])
    reason = np.full(n, None, dtype=object)
    for i, why in (flagged or {}).items():
        reason[i] = why

    def flag(mask: np.ndarray, why: str) -> None:
        sel = mask & (reason == None)  # noqa: E711 - elementwise comparison on an object array
        reason[sel] = why

    def np_mask(a) -> np.ndarray:
        return np.asarray(a.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)

    all_empty = np.ones(n, dtype=bool)
    for a in cols.values():
        all_empty &= np_mask(pc.equal(pc.utf8_length(a), 0))
    flag(all_empty, "empty line")

    tid = cols["trade_id"]
    flag(~np_mask(pc.match_substring_regex(tid, INTEGER)), "trade id is not a non-negative integer")

    for name, label in (("price", "price"), ("quantity", "quantity")):
        a = pc.utf8_trim_whitespace(cols[name])
        lower = pc.utf8_lower(a)
        flag(np_mask(pc.is_in(lower, pa.array(["nan", "inf", "-inf", "+inf", "infinity",
                                                "-infinity"]))), f"non-finite {label}")
        flag(np_mask(pc.starts_with(a, "-")), f"negative {label}")
        flag(~np_mask(pc.match_substring_regex(a, DECIMAL)), f"non-numeric {label}")
        cols[name] = a

    if "quote_quantity" in cols:
        flag(~np_mask(pc.match_substring_regex(cols["quote_quantity"], DECIMAL)),
             "non-numeric quote quantity")

    t = pc.utf8_trim_whitespace(cols["time"])
    t_ok = np_mask(pc.match_substring_regex(t, r"^[0-9]{1,19}$"))
    flag(~t_ok, "non-numeric timestamp")
    digits = np.asarray(pc.utf8_length(t).to_numpy(zero_copy_only=False))
    if units.unit is None:
        first = np.flatnonzero((reason == None) & t_ok)  # noqa: E711
        for i in first[:1]:
            units.unit = _unit_of(int(digits[i]))
    flag(t_ok & (digits <= 11), "timestamp in seconds (too small for ms or µs)")
    flag(t_ok & (digits >= 18), "timestamp in nanoseconds (too large for ms or µs)")
    flag(t_ok & (digits != 13) & (digits != 16), "timestamp magnitude is neither ms nor µs")
    if units.unit:
        other = 16 if units.unit == "ms" else 13
        flag(t_ok & (digits == other),
             f"timestamp unit differs from the file's ({'µs' if other == 16 else 'ms'} "
             f"in a {units.unit} file)")

    bm = pc.utf8_trim_whitespace(cols["is_buyer_maker"])
    bm_l = pc.utf8_lower(bm)
    flag(~np_mask(pc.is_in(bm_l, pa.array(["true", "false"]))), "unknown boolean text")

    if symbol is not None and "symbol" in cols:
        flag(~np_mask(pc.equal(cols["symbol"], symbol)), f"different symbol (expected {symbol})")

    # Convert what passed so far; value checks that need numbers come after.
    ok = reason == None  # noqa: E711
    idx = pa.array(np.flatnonzero(ok))
    take = {k: pc.take(v, idx) for k, v in cols.items()}
    price = pc.cast(take["price"], pa.decimal128(24, 8))
    qty = pc.cast(take["quantity"], pa.decimal128(24, 8))
    raw_t = pc.cast(pc.utf8_trim_whitespace(take["time"]), pa.int64())
    t_us = pc.multiply(raw_t, 1000) if units.unit == "ms" else raw_t
    if "quote_quantity" in take:
        quote = pc.cast(take["quote_quantity"], pa.decimal128(32, 8))
    else:
        quote = quote_of(price, qty)  # aggTrades carry no quote quantity
    now = now_us or int(time.time() * 1_000_000)
    zero = pa.scalar(0, pa.decimal128(24, 8))
    bad_price = np_mask(pc.less_equal(price, zero))
    bad_qty = np_mask(pc.less_equal(qty, zero))
    t_np = raw_t.to_numpy() * (1000 if units.unit == "ms" else 1)
    bad_t = (t_np < MIN_TIME_US) | (t_np > now + FUTURE_SLACK_US)
    sub_ok = np.ones(len(idx), dtype=bool)
    positions = idx.to_numpy()
    for mask, why in ((bad_price, "zero price"), (bad_qty, "zero quantity"),
                      (bad_t, "timestamp outside 2017-07-01 .. now+1 day")):
        hit = mask & sub_ok
        reason[positions[hit]] = why
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
    bad = [(int(i), str(reason[i])) for i in np.flatnonzero(reason != None)]  # noqa: E711
    return table, positions[sub_ok], bad


BOOLEANS = pa.array(["True", "False", "true", "false"])


def _clean(cols: dict[str, pa.Array], units: UnitState, now_us: int | None) -> pa.Table | None:
    """The ticks of a batch in which every row is plainly good — each value exactly in the
    form the checks above accept without trimming — or None: then the batch goes through them
    row by row. Almost every batch of a real dump is clean, and this costs a fraction of the
    full checks (one pattern a column, no trimming, no lower-casing), with the same result."""
    def all_true(a) -> bool:
        return a.null_count == 0 and pc.all(a).as_py() is not False

    digits = 13 if units.unit == "ms" else 16
    checks = [(cols["trade_id"], INTEGER), (cols["price"], DECIMAL),
              (cols["quantity"], DECIMAL), (cols["time"], f"^[0-9]{{{digits}}}$")]
    if "quote_quantity" in cols:
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
    if lo.as_py() < MIN_TIME_US or hi.as_py() > now + FUTURE_SLACK_US:
        return None
    quote = (pc.cast(cols["quote_quantity"], pa.decimal128(32, 8)) if "quote_quantity" in cols
             else quote_of(price, qty))
    return pa.table({
        "trade_id": pc.cast(cols["trade_id"], pa.int64()),
        "event_time": pc.cast(t_us, pa.timestamp("us", tz="UTC")),
        "price": price,
        "quantity": qty,
        "quote_quantity": quote,
        "is_buyer_maker": pc.is_in(cols["is_buyer_maker"], pa.array(["True", "true"])),
        "trade_kind": pa.nulls(len(price), pa.string()),
    }, schema=TICK_SCHEMA)
