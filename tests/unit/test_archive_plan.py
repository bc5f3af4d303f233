"""Which archive files a fetch asks for, and how its options and answers are read (no server)."""

from __future__ import annotations

import email.utils
from datetime import date

import pytest

from workers.sources.binance_archive import (
    ArchiveFile,
    BadRequest,
    Request,
    archive_file_of,
    resolve,
    retry_after_seconds,
)

TODAY = date(2019, 7, 10)


def req(since: str, until: str | None, **kw) -> Request:
    return Request.parse(kw.get("symbol", "BTCUSDT"), kw.get("market", "spot"),
                         kw.get("kind", "trades"), since, until, today=TODAY)


def names(files: list[ArchiveFile]) -> list[str]:
    return [f"{f.period}:{f.date}" for f in files]


def test_whole_months_are_monthly_files_and_the_ends_are_days():
    got = resolve(req("2019-03-30", "2019-06-02"))
    assert names(got) == ["daily:2019-03-30", "daily:2019-03-31", "monthly:2019-04",
                          "monthly:2019-05", "daily:2019-06-01", "daily:2019-06-02"]
    assert got[2].path == "data/spot/monthly/trades/BTCUSDT/BTCUSDT-trades-2019-04.zip"


def test_a_month_given_as_yyyy_mm_is_its_monthly_file():
    assert names(resolve(req("2019-04", "2019-04"))) == ["monthly:2019-04"]
    r = req("2019-02", "2019-02")
    assert (r.since, r.until) == (date(2019, 2, 1), date(2019, 2, 28))


def test_a_range_inside_one_month_is_days():
    assert names(resolve(req("2019-04-29", "2019-05-01"))) == [
        "daily:2019-04-29", "daily:2019-04-30", "daily:2019-05-01"]


def test_a_month_whose_days_are_all_cached_stays_days():
    april_days = {f for f in ArchiveFile("spot", "monthly", "trades", "BTCUSDT",
                                         "2019-04").days()}
    got = resolve(req("2019-04", "2019-05"), cached=lambda f: f in april_days)
    assert [f.period for f in got[:30]] == ["daily"] * 30
    assert names(got[30:]) == ["monthly:2019-05"]
    # One day missing from the cache: the monthly file is cheaper than asking day by day.
    some = set(list(april_days)[1:])
    assert names(resolve(req("2019-04", "2019-04"), cached=lambda f: f in some)) == [
        "monthly:2019-04"]


def test_markets_and_kinds_are_archive_folders():
    um = resolve(req("2019-04-01", "2019-04-01", market="um", kind="aggTrades"))
    assert um[0].path == ("data/futures/um/daily/aggTrades/BTCUSDT/"
                          "BTCUSDT-aggTrades-2019-04-01.zip")
    cm = resolve(req("2019-04-01", "2019-04-01", market="cm", symbol="btcusd_perp"))
    assert cm[0].path == ("data/futures/cm/daily/trades/BTCUSD_PERP/"
                          "BTCUSD_PERP-trades-2019-04-01.zip")


def test_until_defaults_to_yesterday_and_the_future_is_refused():
    assert req("2019-07-01", None).until == date(2019, 7, 9)
    with pytest.raises(BadRequest, match="not in the archive yet.*2019-07-09"):
        req("2019-07-01", "2019-07-10")


@pytest.mark.parametrize("kw, match", [
    ({"symbol": "BTC/USDT"}, "not a Binance symbol"),
    ({"symbol": ""}, "not a Binance symbol"),
    ({"market": "margin"}, "--market must be one of spot, um, cm"),
    ({"kind": "klines"}, "--kind must be trades or aggTrades"),
    ({"since": "2019-13-01"}, "--since '2019-13-01' is not a date"),
    ({"since": "yesterday"}, "is not a date"),
    ({"since": "2019-05-02", "until": "2019-05-01"}, "is after --until"),
])
def test_bad_options_are_named(kw, match):
    with pytest.raises(BadRequest, match=match) as e:
        Request.parse(kw.get("symbol", "BTCUSDT"), kw.get("market", "spot"),
                      kw.get("kind", "trades"), kw.get("since", "2019-04-01"),
                      kw.get("until", "2019-04-02"), today=TODAY)
    assert e.value.exit_code == 2


def test_february_of_a_leap_year():
    feb = ArchiveFile("spot", "monthly", "trades", "BTCUSDT", "2020-02")
    assert len(feb.days()) == 29 and feb.last_day == date(2020, 2, 29)


def test_the_market_comes_from_the_archive_path():
    f = archive_file_of("/cache/data/futures/um/daily/trades/BTCUSDT/BTCUSDT-trades-2024-03-05.zip")
    assert f == ArchiveFile("um", "daily", "trades", "BTCUSDT", "2024-03-05")
    cm = archive_file_of("x/data/futures/cm/monthly/aggTrades/BTCUSD_PERP/"
                         "BTCUSD_PERP-aggTrades-2024-03.zip")
    assert (cm.market, cm.period, cm.kind) == ("cm", "monthly", "aggTrades")
    spot = archive_file_of("data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2019-04-01.zip")
    assert spot.market == "spot"
    # Not in the archive layout (no market to read): None, never a guess from the symbol.
    assert archive_file_of("../shared/data/BTCUSDT-trades-2019-04-01.zip") is None
    assert archive_file_of("data/spot/daily/trades/BTCUSDT/ETHUSDT-trades-2019-04-01.zip") is None
    assert archive_file_of("data/spot/monthly/trades/BTCUSDT/BTCUSDT-trades-2019-04-01.zip") \
        is None


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    when = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(when, now=1_000_000) == pytest.approx(30.0)
    assert retry_after_seconds(when, now=2_000_000) == 0.0
