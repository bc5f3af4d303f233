"""The ivfflat lifecycle and `similar` on real windows."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg
import pytest

from tests.integration.pipeline import Stack
from workers.db.ingest import ingest_file
from workers.signals import embed, similar, vector_index

DAY = "BTCUSDT-trades-2019-04-01"


def test_rules():
    assert vector_index.lists_for(500) == 1
    assert vector_index.lists_for(200_000) == 200  # the data model's lists = 200
    assert vector_index.lists_for(4_000_000) == 2000
    assert vector_index.probes_for(200) == 14 and vector_index.probes_for(1) == 1


def index_names(stack: Stack) -> list[str]:
    with stack.admin() as c:
        return [r[0] for r in c.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'signals' "
            "AND tablename = 'btc_embeddings' AND indexdef LIKE '%%ivfflat%%'")]


def test_index_absent_below_threshold_built_above_and_rebuilt_on_doubling(
        local_env, shared_data, tmp_path):
    s = Stack(local_env)
    try:
        lines = (shared_data / f"{DAY}.csv").read_text().splitlines(keepends=True)
        part = tmp_path / "BTCUSDT-trades-part.csv"
        part.write_text("".join(lines[:60_000]))  # roughly the first 7 hours
        with s.ingest_conn() as conn:
            ingest_file(conn, s.landing(), str(part))
        with s.embed_conn() as conn:
            r = embed.run(conn, index_min_rows=10_000)
        assert r.index.startswith("none (below threshold)") and index_names(s) == []
        with s.embed_conn() as conn:
            r = embed.run(conn, index_min_rows=50)
        first = index_names(s)
        assert r.index.startswith("built") and len(first) == 1
        with s.embed_conn() as conn:  # not doubled: kept
            assert embed.run(conn, index_min_rows=50).index.startswith("kept")
        with s.ingest_conn() as conn:
            ingest_file(conn, s.landing(), str(shared_data / f"{DAY}.csv"))
        with s.embed_conn() as conn:
            r = embed.run(conn, index_min_rows=50)
        assert r.index.startswith("rebuilt")
        second = index_names(s)
        assert len(second) == 1 and second != first  # new one built, old one dropped
        with s.admin() as c:
            builds = c.execute("SELECT rows, lists, replaced FROM signals.vector_index_builds "
                               "ORDER BY built_at").fetchall()
            n = c.execute("SELECT count(*) FROM signals.btc_embeddings").fetchone()[0]
        assert builds[0][2] is None and builds[1][2] == first[0]
        assert builds[1][0] == n and builds[1][1] == vector_index.lists_for(n)
        # The embed role cannot build an index by hand, only through the function.
        with s.embed_conn() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE INDEX x ON signals.btc_embeddings (bucket)")
        with s.embed_conn() as conn, pytest.raises(psycopg.errors.InvalidParameterValue,
                                                        match="lists must be between"):
            conn.execute("SELECT signals.build_embedding_index(0)")
    finally:
        s.close()


@pytest.fixture(scope="module")
def embedded(local_env, shared_data):
    s = Stack(local_env)
    with s.ingest_conn() as conn:
        ingest_file(conn, s.landing(), str(shared_data / f"{DAY}.zip"))
    with s.embed_conn() as conn:
        embed.run(conn)
    yield s
    s.close()


def reader(stack: Stack):
    return stack.db.connect(user="reader", password=stack.env.secrets["reader"])


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
