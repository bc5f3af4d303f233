"""What a dump file is, from its first rows (workers/sources/layouts.py), and what a market's
quantity means (workers/core/markets.py): pure functions, every published shape and the
renamed / ambiguous ones (ids of ten digits look like timestamps in seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from workers.core.errors import BadInput
from workers.core.markets import CM_TRADES, instrument
from workers.sources.binance_stream import Reject, market_of_url, parse
from workers.sources.layouts import (
    FUT_AGG,
    FUT_TRADES,
    SPOT_AGG,
    SPOT_TRADES,
    BadFile,
    layout_from_header,
    layout_from_rows,
)

P = Path("x.csv")
T = 1_723_075_200_000
BIG = 5_000_000_000  # a trade id of today: ten digits


@pytest.mark.parametrize(("rows", "layout"), [
    ([f"1,58000.1,0.01,580.001,{T},True,True"], SPOT_TRADES),
    ([f"{BIG},58000.1,0.01,580.001,{T}000,true,true"], SPOT_TRADES),  # µs, big ids
    ([f"1,58000.1,0.01,580.001,{T},false"], FUT_TRADES),
    ([f"1,58000.1,0.01,{BIG},{BIG + 1},{T},True,True"], SPOT_AGG),
    ([f"1,58000.1,0.01,{BIG},{BIG + 1},{T},false"], FUT_AGG),  # col 4 looks like a timestamp
    ([f"1,58000.1,0.01,1,1,{T},False"], FUT_AGG),
    # a bad first row (quarantined later) does not decide; an aggTrades row anywhere does
    ([f"1,58000.1,0.01,580.001,{T},maybe,True", f"2,58000.1,0.01,580.001,{T},True,True"],
     SPOT_TRADES),
    ([f"1,58000.1,0.01,580.001,{T},True,True", f"2,58000.1,0.01,{BIG},{BIG},{T},true"],
     FUT_AGG),
])
def test_layout_from_rows(rows, layout):
    assert layout_from_rows(P, [r.encode() for r in rows]) is layout


def test_layout_from_headers():
    assert layout_from_header(P, CM_TRADES.columns) is CM_TRADES
    assert layout_from_header(P, FUT_TRADES.columns) is FUT_TRADES
    assert layout_from_header(P, FUT_AGG.columns) is FUT_AGG
    with pytest.raises(BadFile, match="header id,price"):
        layout_from_header(P, ("id", "price", "qty"))


@pytest.mark.parametrize(("symbol", "usd"), [
    ("BTCUSD_PERP", 100), ("BTCUSD_241227", 100), ("ETHUSD_PERP", 10), ("SOLUSD_250328", 10)])
def test_coin_m_contract_sizes(symbol, usd):
    inst = instrument("cm", symbol)
    assert inst.contract_usd == usd and inst.quantity_unit == "contracts"
    q = inst.quote(pa.array(["58000.1"]).cast(pa.decimal128(24, 8)),
                   pa.array(["3"]).cast(pa.decimal128(24, 8)))
    assert q.to_pylist()[0] == 3 * usd


@pytest.mark.parametrize("symbol", ["BTCUSDT", "BTCUSD", "BTCUSD_QUARTER", "USD_PERP"])
def test_an_unknown_coin_m_symbol_is_refused(symbol):
    with pytest.raises(BadInput, match="unknown COIN-M symbol"):
        instrument("cm", symbol)
    assert instrument("um", "BTCUSDT").contract_usd is None


def test_stream_aggtrade_urls_and_events():
    for url in ("wss://stream.binance.com:9443/ws/btcusdt@aggTrade",
                "wss://fstream.binance.com/stream?streams=btcusdt@trade/btcusdt@aggTrade",
                "wss://stream.binance.com:9443/stream?streams=btcusdt%40aggtrade"):
        with pytest.raises(BadInput, match="@aggTrade"):
            market_of_url(url)
    assert market_of_url("wss://dstream.binance.com/ws/btcusd_perp@trade") == "cm"
    agg = json.dumps({"e": "aggTrade", "s": "BTCUSDT", "a": 1, "p": "1", "q": "1", "f": 1,
                      "l": 1, "T": T, "m": True})
    with pytest.raises(Reject) as r:
        parse(agg, "BTCUSDT", 65_536)
    assert r.value.kind == "aggTrade"


def test_stream_coin_m_contracts_must_be_whole_and_times_not_ahead():
    inst = instrument("cm", "BTCUSD_PERP")
    def msg(q: str, t: int) -> str:
        return json.dumps({"e": "trade", "s": "BTCUSD_PERP", "t": 7, "p": "58000.1", "q": q,
                           "T": t, "X": "MARKET", "m": False})

    assert parse(msg("3", T), "BTCUSD_PERP", 65_536, market="cm", instrument=inst)[2] == "3"
    with pytest.raises(Reject, match="whole number of contracts"):
        parse(msg("2.5", T), "BTCUSD_PERP", 65_536, market="cm", instrument=inst)
    now_us = T * 1000
    with pytest.raises(Reject) as r:
        parse(msg("3", T + 61_000), "BTCUSD_PERP", 65_536, now_us, market="cm",
              instrument=inst, future_us=60_000_000)
    assert r.value.kind == "future_time"
    assert parse(msg("3", T + 59_000), "BTCUSD_PERP", 65_536, now_us, market="cm",
                 instrument=inst, future_us=60_000_000)[3] == (T + 59_000) * 1000
