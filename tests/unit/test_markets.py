"""The market registry (workers/core/markets.py) is the one room of the markets: every other
list of markets — the CLI's help, the stack config's type, the archive paths, the stream hosts,
the file layouts, the SQL lookup table — is read from it or checked against it here."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from infra.stack_config import StackConfig
from workers.core import markets
from workers.core.errors import BadInput
from workers.core.markets import BY_NAME, MARKETS, BucketId, instrument, market
from workers.landing.store import bucket_of_key, object_key
from workers.sources.binance_archive import ArchiveFile, archive_file_of
from workers.sources.binance_stream import market_of_url
from workers.sources.layouts import TRADES_OF_MARKET, market_from_path

REPO = Path(__file__).resolve().parents[2]
SEED = re.compile(r"INSERT INTO ingestion\.markets \(market, title\) VALUES\s*(.*?);", re.S)


def seeded_markets() -> list[str]:
    """The markets migrations seed into ingestion.markets, in order."""
    names: list[str] = []
    for f in sorted((REPO / "sql").glob("[0-9][0-9][0-9]_*.sql")):
        for values in SEED.findall(f.read_text()):
            names += re.findall(r"\(\s*'([a-z0-9_]+)'", values)
    return names


def test_the_sql_lookup_table_holds_exactly_the_registry():
    """Adding a market to the registry without a migration seeding it (or the reverse) fails
    here; tests/integration/test_migrations.py checks the seeded table on a real server."""
    assert seeded_markets() == list(MARKETS)


def test_no_other_sql_lists_the_markets():
    """The markets are the lookup table's rows: a migration after 026 that writes a CHECK on
    the market names brings back the list the table replaced."""
    for f in sorted((REPO / "sql").glob("[0-9][0-9][0-9]_*.sql")):
        if int(f.name[:3]) > 26:
            assert not re.search(r"market\s+IN\s*\(", f.read_text(), re.I), f.name


def test_the_stack_config_type_is_the_registry():
    ann = StackConfig.model_fields["stream_market"].annotation
    assert typing.get_args(ann) == MARKETS


def test_every_market_has_a_layout_an_archive_path_and_a_stream_host():
    for name, m in BY_NAME.items():
        assert TRADES_OF_MARKET[name] is m.trades and m.stream_hosts
        f = ArchiveFile(name, "daily", "trades", "BTCUSD_PERP", "2024-03-05")
        assert f.path.startswith(f"data/{m.archive_path}/daily/")
        assert archive_file_of(f"/cache/{f.path}") == f
        assert market_from_path(Path("/c/data") / m.archive_path / "daily" / "x.zip") == name
        for host in m.stream_hosts:
            assert market_of_url(f"wss://{host}/ws/btcusdt@trade") == name


def test_an_unknown_market_is_refused_with_the_known_ones():
    with pytest.raises(BadInput, match=r"unknown market 'margin' \(spot, um = USDⓈ-M, cm = "
                                       r"COIN-M\)"):
        market("margin")
    assert markets.choices("|") == "spot|um|cm"
    assert markets.choices_help() == "spot, um (USDⓈ-M futures) or cm (COIN-M futures)"


def test_an_instrument_checks_its_market_and_symbol():
    assert instrument("spot", "BTCUSDT") == markets.Instrument("spot", "BTCUSDT")
    with pytest.raises(BadInput, match="not a symbol"):
        instrument("spot", "btc usdt")
    with pytest.raises(BadInput, match="unknown market"):
        instrument("perp", "BTCUSDT")


def test_a_bucket_id_is_the_landing_keys_triple():
    key = object_key("um", "BTCUSDT", 1_554_076_800_000_000)
    b = bucket_of_key(key)
    assert b == BucketId("um", "BTCUSDT", 1_554_076_800_000_000)
    assert b == ("um", "BTCUSDT", 1_554_076_800_000_000)  # still the triple callers unpack
    assert (b.market, b.symbol, b.start_us) == tuple(b) and object_key(*b) == key


def test_the_registry_loads_without_pyarrow():
    """The CLI reads its choices from the registry at start: importing it stays light."""
    code = ("import sys, workers.core.markets; "
            "print(sorted(m for m in ('pyarrow', 'numpy', 'psycopg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
