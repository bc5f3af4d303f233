"""Every class of bad input gets a clear error (exit 2, nothing written) or a quarantine entry."""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest

from tests.integration.pipeline import Stack
from workers.db.ingest import ingest_file
from workers.sources.binance_files import BadFile

T0 = 1_554_076_800_000  # 2019-04-01 00:00:00 UTC in ms
NAME = "BTCUSDT-trades-2019-04-01.csv"


@pytest.fixture(scope="module")
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


def good_rows(n: int = 10, start_id: int = 1000, t0: int = T0) -> list[str]:
    return [f"{start_id + i},4100.{i:02d},0.{i + 1:03d},1.0,{t0 + i * 1000},"
            f"{'True' if i % 2 else 'False'},True" for i in range(n)]


def write(tmp: Path, lines: list[str], name: str = NAME, eol: str = "\n",
          prefix: bytes = b"") -> Path:
    p = tmp / name
    p.write_bytes(prefix + eol.join(lines).encode() + eol.encode())
    return p


def zipped(tmp: Path, members: dict[str, bytes], name: str = "BTCUSDT-trades-2019-04-01.zip"
           ) -> Path:
    p = tmp / name
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    return p


def quarantine(stack: Stack, uri: str) -> list[dict]:
    key = uri.removeprefix(f"s3://{stack.bucket}/")
    body = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read().decode()
    return [json.loads(ln) for ln in body.splitlines()]


def ingest(stack: Stack, path: Path, **kw):
    with stack.ingest_conn() as conn:
        return ingest_file(conn, stack.landing(), str(path), **kw)


def assert_refused(stack: Stack, path: Path, reason: str) -> None:
    """Exit 2 from the CLI, the file named, and nothing of it written anywhere."""
    before = (stack.checksums(), stack.s3.list_object_versions(Bucket=stack.bucket)
              .get("Versions", []).__len__())
    r = stack.cli("ingest", str(path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert path.name in r.stderr and reason in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    after = (stack.checksums(), stack.s3.list_object_versions(Bucket=stack.bucket)
             .get("Versions", []).__len__())
    assert after == before


# --- files that are not trade files: exit 2, nothing written ---------------------------------

def test_bad_checksum(stack, tmp_path):
    z = zipped(tmp_path, {NAME: "\n".join(good_rows()).encode()})
    (tmp_path / (z.name + ".CHECKSUM")).write_text("0" * 64 + f"  {z.name}\n")
    assert_refused(stack, z, "checksum mismatch")


def test_good_checksum_is_accepted(stack, tmp_path):
    z = zipped(tmp_path, {NAME: "\n".join(good_rows(start_id=50_000)).encode()})
    digest = hashlib.sha256(z.read_bytes()).hexdigest()
    (tmp_path / (z.name + ".CHECKSUM")).write_text(f"{digest}  {z.name}\n")
    assert ingest(stack, z).accepted == 10


def test_truncated_zip(stack, tmp_path):
    z = zipped(tmp_path, {NAME: "\n".join(good_rows(2000)).encode()})
    z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    assert_refused(stack, z, "not a valid zip")


def test_zip_without_csv(stack, tmp_path):
    assert_refused(stack, zipped(tmp_path, {"readme.txt": b"hello"}), "exactly one CSV")


def test_zip_with_two_csvs(stack, tmp_path):
    data = "\n".join(good_rows()).encode()
    assert_refused(stack, zipped(tmp_path, {"a.csv": data, "b.csv": data}), "exactly one CSV")


def test_empty_file(stack, tmp_path):
    p = tmp_path / NAME
    p.write_bytes(b"")
    assert_refused(stack, p, "empty file")


def test_header_only(stack, tmp_path):
    p = write(tmp_path, ["id,price,qty,quote_qty,time,is_buyer_maker"],
              name="BTCUSDT-trades-2024-01-01.csv")
    assert_refused(stack, p, "header only")


def test_not_a_trade_file(stack, tmp_path):
    p = write(tmp_path, ["a,b,c", "1,2,3"], name="BTCUSDT-trades-x.csv")
    assert_refused(stack, p, "not a Binance trades/aggTrades file")
    p = write(tmp_path, ["1,2,3,4,5", "1,2,3,4,5"], name="BTCUSDT-trades-y.csv")
    assert_refused(stack, p, "no known layout")


def test_gzip_named_zip(stack, tmp_path):
    p = tmp_path / "BTCUSDT-trades-2019-04-02.zip"
    p.write_bytes(gzip.compress("\n".join(good_rows()).encode()))
    assert_refused(stack, p, "not a valid zip")


def test_symbol_contradicting_file_name(stack, tmp_path):
    p = write(tmp_path, good_rows())
    with pytest.raises(BadFile, match="contradicts the file name"):
        ingest(stack, p, symbol="ETHUSDT")


def test_no_symbol_anywhere(stack, tmp_path):
    p = write(tmp_path, good_rows(), name="trades.csv")
    with pytest.raises(BadFile, match="pass --symbol"):
        ingest(stack, p)


# --- bad rows: quarantined with line and reason, the rest of the file accepted -----------------

BAD_ROWS = [
    ("2001,abc,0.1,1.0,{t},True,True", "non-numeric price"),
    ("2002,NaN,0.1,1.0,{t},True,True", "non-finite price"),
    ("2003,4100,inf,1.0,{t},True,True", "non-finite quantity"),
    ("2004,-4100,0.1,1.0,{t},True,True", "negative price"),
    ("2005,0,0.1,1.0,{t},True,True", "zero price"),
    ("2006,4100,0.00000000,1.0,{t},True,True", "zero quantity"),
    ("2007,4100,0.1,1.0,1554076800,True,True", "timestamp in seconds"),
    ("2008,4100,0.1,1.0,1554076800000000000,True,True", "timestamp in nanoseconds"),
    ("2009,4100,0.1,1.0,1554076800000000,True,True", "timestamp unit differs"),
    ("2010,4100,0.1,1.0,{t},maybe,True", "unknown boolean text"),
    ("2011,4100,0.1,1.0", "wrong column count"),
    ("x12,4100,0.1,1.0,{t},True,True", "trade id is not a non-negative integer"),
    ("2013,4100.123456789,0.1,1.0,{t},True,True", "non-numeric price"),
    ("2014,4100,0.1,1.0,1400000000000,True,True", "timestamp before 2017-07-01"),
    ("", "empty line"),
]


def test_each_bad_row_class_is_quarantined_with_its_line(stack, tmp_path):
    t = T0 + 500_000
    lines = good_rows(5, start_id=1000)
    expected = {}
    for row, reason in BAD_ROWS:
        lines.append(row.format(t=t))
        expected[len(lines)] = reason  # 1-based line number
    lines += good_rows(5, start_id=1005, t0=T0 + 5_000)
    s = ingest(stack, write(tmp_path, lines, name="BTCUSDT-trades-bad.csv"))
    assert s.accepted == 10 and s.rows_read == len(lines)
    assert sum(s.quarantined.values()) == len(BAD_ROWS)
    got = {q["line"]: q["reason"] for q in quarantine(stack, s.quarantine_uri)}
    assert set(got) == set(expected)
    for line, reason in expected.items():
        assert got[line].startswith(reason), (line, got[line], reason)
    # Accepted + quarantined = every line read: nothing silently dropped.
    assert s.accepted + sum(s.quarantined.values()) == s.rows_read


def test_duplicate_trade_ids_within_a_file(stack, tmp_path):
    rows = good_rows(6, start_id=3000)
    rows.append(rows[2])  # identical duplicate: counted, not an error
    rows.append(rows[3].replace(",4100.03,", ",9999.99,"))  # same id, other price: quarantined
    s = ingest(stack, write(tmp_path, rows, name="BTCUSDT-trades-dups.csv"))
    assert s.duplicates == 1 and s.inserted == 6
    q = quarantine(stack, s.quarantine_uri)
    assert [(x["line"], x["reason"].split(" (")[0]) for x in q] == [
        (8, "conflicting duplicate trade id")]
    assert q[0]["text"] == rows[7] and q[0]["file"] == "BTCUSDT-trades-dups.csv"
    with stack.admin() as c:
        assert c.execute("SELECT price FROM market_data.btc_ticks WHERE trade_id = 3003"
                         ).fetchone()[0] == Decimal("4100.03")


def test_out_of_order_rows_land_in_their_buckets(stack, tmp_path):
    a = good_rows(3, start_id=4000, t0=T0 + 3_600_000)  # 01:00
    b = good_rows(3, start_id=4003, t0=T0 + 3_000_000)  # 00:50, later in the file
    s = ingest(stack, write(tmp_path, a + b + good_rows(2, 4006, T0 + 3_700_000),
                            name="BTCUSDT-trades-ooo.csv"))
    assert s.inserted == 8 and not s.quarantined
    with stack.admin() as c:
        rows = c.execute("SELECT trade_id, bucket_5m FROM market_data.btc_ticks "
                         "WHERE trade_id BETWEEN 4000 AND 4007 ORDER BY trade_id").fetchall()
    assert [r[1].strftime("%H:%M") for r in rows] == ["01:00"] * 3 + ["00:50"] * 3 + \
        ["01:00"] * 2


def test_crlf_and_bom_are_read_normally(stack, tmp_path):
    p = write(tmp_path, good_rows(4, start_id=5000), name="BTCUSDT-trades-crlf.csv",
              eol="\r\n", prefix=b"\xef\xbb\xbf")
    s = ingest(stack, p)
    assert (s.accepted, s.inserted, sum(s.quarantined.values())) == (4, 4, 0)
    with stack.admin() as c:
        assert c.execute("SELECT count(*) FROM market_data.btc_ticks WHERE trade_id "
                         "BETWEEN 5000 AND 5003 AND is_buyer_maker").fetchone()[0] == 2


def test_lowercase_booleans_and_microseconds(stack, tmp_path):
    t_us = 1_735_689_600_000_000  # 2025-01-01, µs as Binance writes from 2025
    rows = [f"{6000 + i},95000.5,0.01,950.005,{t_us + i * 1000},{'true' if i else 'false'},true"
            for i in range(3)]
    s = ingest(stack, write(tmp_path, rows, name="BTCUSDT-trades-2025-01-01.csv"))
    assert s.inserted == 3
    with stack.admin() as c:
        t = c.execute("SELECT min(event_time) FROM market_data.btc_ticks "
                      "WHERE trade_id >= 6000 AND trade_id < 6003").fetchone()[0]
    assert t.isoformat() == "2025-01-01T00:00:00+00:00"


def test_futures_with_header_and_agg_trades(stack, tmp_path):
    fut = ["id,price,qty,quote_qty,time,is_buyer_maker"] + [
        f"{7000 + i},4100.5,0.2,820.1,{T0 + i},false" for i in range(3)]
    # A futures file says so by its columns; which futures market, only its path or --market.
    s = ingest(stack, write(tmp_path, fut, name="ETHUSDT-trades-2019-04-01.csv"), market="um")
    assert (s.inserted, s.quarantined.total()) == (3, 0)
    # aggTrades are another dataset (their ids another sequence): refused, never stored as
    # trades (tests/integration/test_sources_round2.py covers every shape).
    agg = [f"{8000 + i},4100.5,0.2,{9000 + i},{9000 + i},{T0 + i},True,True" for i in range(4)]
    assert_refused(stack, write(tmp_path, agg, name="SOLUSDT-aggTrades-2019-04-01.csv"),
                   "aggregate trades are not ingested")
