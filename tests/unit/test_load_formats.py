"""The fast paths of issue 19 give the same results as the paths they stand in for.

* `validate`'s clean-batch path vs every check on every row (`validate_rows`);
* binary COPY tuples (workers/db/copy_binary.py) decoded back vs the ticks they encode, and the
  cases the binary layout must refuse (they go as CSV).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from workers.core.ticks import BUCKET_US, TICK_SCHEMA
from workers.db import copy_binary
from workers.sources.validate import UnitState, validate, validate_rows

T0_MS = 1_711_929_600_000  # 2024-04-01


def text_batch(n: int, seed: int, bad: dict[int, tuple[str, str]] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    cents = [int(c) for c in rng.integers(100, 10**11, n)]  # prices below 10^9
    units = [int(u) for u in rng.integers(1, 10**8, n)]  # quantities below 1
    rows = {
        "trade_id": [str(10**9 + i) for i in range(n)],
        "price": [f"{c // 100}.{c % 100:02d}000000" for c in cents],
        "quantity": [f"{u // 10**8}.{u % 10**8:08d}" for u in units],
        "quote_quantity": [f"{(c * u) // 10**10}.{((c * u) % 10**10) // 100:08d}"
                           for c, u in zip(cents, units, strict=True)],
        "time": [str(T0_MS + int(x)) for x in np.sort(rng.integers(0, 86_400_000, n))],
        "is_buyer_maker": [rng.choice(["True", "False", "true", "false"]) for _ in range(n)],
    }
    for i, (col, value) in (bad or {}).items():
        rows[col][i] = value
    return {k: pa.array(v, pa.string()) for k, v in rows.items()}


def both(cols: dict, unit: str = "ms"):
    fast = validate(dict(cols), UnitState(unit), now_us=T0_MS * 1000 + 10**12)
    slow = validate_rows(dict(cols), UnitState(unit), now_us=T0_MS * 1000 + 10**12)
    return fast, slow


def test_a_clean_batch_gives_what_every_check_gives():
    (ft, fp, fb), (st, sp, sb) = both(text_batch(5000, 1))
    assert fb == sb == []
    assert ft.equals(st) and ft.num_rows == 5000
    assert (fp == sp).all()


@pytest.mark.parametrize("bad", [
    {7: ("price", " 12.5 ")},  # accepted by the full checks (trimmed), not plainly clean
    {7: ("is_buyer_maker", "TRUE")},
    {7: ("price", "0.00000000")},
    {7: ("quantity", "1e5")},
    {7: ("time", "1711929600")},
    {7: ("time", "1711929600000000")},
    {7: ("trade_id", "-5")},
    {7: ("price", "1.123456789")},
    {7: ("quote_quantity", "abc"), 9: ("price", "nan")},
    {7: ("time", "1000000000000")},  # 2001: outside the range
])
def test_a_batch_with_an_unusual_row_gets_every_check(bad):
    (ft, fp, fb), (st, sp, sb) = both(text_batch(50, 2, bad))
    assert ft.equals(st) and (fp == sp).all() and fb == sb


def ticks(n: int, seed: int = 3, **override) -> pa.Table:
    rng = np.random.default_rng(seed)
    us = (T0_MS * 1000 + np.sort(rng.integers(0, 86_400 * 10**6, n))).astype(np.int64)
    cols = {
        "trade_id": pa.array(np.arange(n, dtype=np.int64) * 7 + 10**10),
        "event_time": pa.array(us, pa.timestamp("us", tz="UTC")),
        "price": pa.array([Decimal(int(x)).scaleb(-8) for x in rng.integers(1, 10**18, n)],
                          pa.decimal128(24, 8)),
        "quantity": pa.array([Decimal(int(x)).scaleb(-8) for x in rng.integers(1, 10**12, n)],
                             pa.decimal128(24, 8)),
        "quote_quantity": pa.array([Decimal(int(x)).scaleb(-8)
                                    for x in rng.integers(0, 2**63 - 1, n)],
                                   pa.decimal128(32, 8)),
        "is_buyer_maker": pa.array(rng.random(n) < 0.5),
        "trade_kind": pa.nulls(n, pa.string()),
    }
    cols.update(override)
    return pa.table(cols, schema=TICK_SCHEMA)


def decode(data: bytes, market: bytes, symbol: bytes) -> list[tuple]:
    """Binary COPY tuples read back field by field (PostgreSQL's documented layout)."""
    out, i = [], 0
    epoch = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
    while i < len(data):
        (nf,) = struct.unpack_from(">h", data, i)
        i += 2
        fields = []
        for _ in range(nf):
            (length,) = struct.unpack_from(">i", data, i)
            i += 4
            fields.append(None if length < 0 else data[i:i + length])
            i += max(length, 0)
        b, m, s, tid, et, price, qty, quote, bm, kind = fields
        assert (m, s, kind) == (market, symbol, None)

        def num(raw: bytes) -> Decimal:
            nd, weight, sign, dscale = struct.unpack_from(">4h", raw)
            digits = struct.unpack_from(f">{nd}h", raw, 8)
            assert sign == 0 and dscale == 8 and all(0 <= d < 10_000 for d in digits)
            value = sum(Decimal(d) * Decimal(10_000) ** (weight - k) for k, d in enumerate(digits))
            return value.quantize(Decimal("1e-8"))

        ts = struct.unpack(">q", et)[0]
        assert struct.unpack(">q", b)[0] == ts - ts % BUCKET_US - 0  # bucket floors event time
        out.append((struct.unpack(">q", tid)[0],
                    datetime.fromtimestamp(epoch + ts / 1e6, UTC).replace(
                        microsecond=ts % 1_000_000),
                    num(price), num(qty), num(quote), bm == b"\x01"))
    return out


def test_binary_tuples_decode_to_the_same_ticks():
    t = ticks(2000)
    assert copy_binary.encodable(t)
    got = decode(bytes(copy_binary.rows("spot", "BTCUSDT", t)), b"spot", b"BTCUSDT")
    want = [(r["trade_id"], r["event_time"], r["price"], r["quantity"], r["quote_quantity"],
             r["is_buyer_maker"]) for r in t.to_pylist()]
    assert got == want
    # A slice (as loads send them, 8192 rows at a time) starts at its own first row.
    part = decode(bytes(copy_binary.rows("um", "BTCUSDT", t.slice(1000, 300))), b"um",
                  b"BTCUSDT")
    assert part == want[1000:1300]


def test_what_the_binary_layout_cannot_carry_is_refused():
    n = 10
    assert not copy_binary.encodable(ticks(n, trade_kind=pa.array(["ADL"] * n)))
    assert not copy_binary.encodable(ticks(n, quote_quantity=pa.nulls(n, pa.decimal128(32, 8))))
    big = pa.array([Decimal(2**63).scaleb(-8)] * n, pa.decimal128(32, 8))
    assert not copy_binary.encodable(ticks(n, quote_quantity=big))
    neg = pa.array([Decimal(-1)] * n, pa.decimal128(32, 8))
    assert not copy_binary.encodable(ticks(n, quote_quantity=neg))
    assert copy_binary.encodable(ticks(n))
