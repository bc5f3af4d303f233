"""`similar` on the real day's embedded windows: the nearest windows, the CLI and its usage
errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.integration.pipeline import Stack
from tests.integration.vectors.support import DAY, reader
from workers.db.ingest import ingest_file
from workers.signals import embed, similar


@pytest.fixture(scope="module")
def embedded(local_env, shared_data):
    s = Stack(local_env)
    with s.ingest_conn() as conn:
        ingest_file(conn, s.landing(), str(shared_data / f"{DAY}.zip"))
    with s.embed_conn() as conn:
        embed.run(conn)
    yield s
    s.close()


def test_similar_finds_the_window_itself_when_not_excluded(embedded):
    at = datetime(2019, 4, 1, 15, 2, tzinfo=UTC)
    with reader(embedded) as conn:
        r = similar.query(conn, symbol="BTCUSDT", at=at, k=3, exclude_minutes=0)
    assert r["window"] == "2019-04-01T15:00:00+00:00"
    first = r["neighbours"][0]
    assert first["bucket"] == r["window"] and first["distance"] == pytest.approx(0, abs=1e-6)
    with reader(embedded) as conn:
        r = similar.query(conn, symbol="BTCUSDT", at=at, k=5, exclude_minutes=60)
    assert all(n["bucket"] < "2019-04-01T14:00" for n in r["neighbours"])
    assert len(r["neighbours"]) == 5
    d = [n["distance"] for n in r["neighbours"]]
    assert d == sorted(d) and d[0] > 0
    m = r["means"]["fwd_ret_60m"]
    assert m["n"] == 5 and m["unconditional"] is not None


def test_similar_cli_json_and_missing_window(embedded):
    r = embedded.cli("similar", "--at", "2019-04-01T15:02:00Z", "-k", "4", "--json")
    env_reader = embedded.cli_env()
    assert r.returncode == 0, (r.stderr, env_reader.get("TICKSTACK_READER_DSN"))
    out = json.loads(r.stdout)
    assert len(out["neighbours"]) == 4
    r = embedded.cli("similar", "--at", "2019-04-03T00:00:00Z")
    assert r.returncode == 2 and "no embedding for BTCUSDT at 2019-04-03 00:00" in r.stderr
    r = embedded.cli("similar", "--at", "yesterday")
    assert r.returncode == 2 and "not an ISO timestamp" in r.stderr


def test_similar_latest_queries_the_newest_window(embedded):
    r = embedded.cli("similar", "--at", "latest", "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    with embedded.admin() as c:
        newest = c.execute("SELECT max(bucket) FROM signals.btc_embeddings").fetchone()[0]
    assert out["window"] == newest.isoformat()
    assert len(out["neighbours"]) == 3
    assert all(n["bucket"] < newest.isoformat()
               for n in out["neighbours"])


@pytest.mark.parametrize(("args", "says"), [
    (["--probes", "2147483648"], "--probes must be between 1 and 32768"),
    (["-k", "99999999999999999999999"], "-k"),
    (["--exclude-minutes", "99999999999999"], "--exclude-minutes must be between 0 and"),
    (["--at", "0000-01-01"], "not an ISO timestamp: '0000-01-01'"),
    (["--at", "0001-01-01T00:10+05:00"], "'0001-01-01T00:10+05:00': year 0 is out of range"),
    (["--at", "9999-12-31T23:59:59-05:00"], "year 10000 is out of range"),
    (["--at", "2019-04-01T15:02:00+99:00"], "not an ISO timestamp"),
])
def test_similar_out_of_range_options_are_usage_errors(embedded, args, says):
    """Issue 21: out-of-range options end in a clear exit-2 message, never a traceback or a
    database error (exit 1)."""
    at = [] if "--at" in args else ["--at", "2019-04-01T15:02:00Z"]
    r = embedded.cli("similar", *at, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert says in r.stderr and "Traceback" not in r.stderr
