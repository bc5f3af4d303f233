"""The licensed tier doing what production does, on the real Binance day: retention compresses
the day's chunk, and everything downstream still works on it — per-bucket checksums unchanged,
late trades merged into the compressed chunk exactly once, landing replay and `replicate`
across it, `embed` and `similar` reading it. (A backup of compressed data restoring to equal
checksums: tests/integration/test_backup_dr.py, whose drill runs on a compressed chunk.)

"Unchanged" is measured against the same database before compression: its state (per-bucket
checksums, landing registry, aggregates), its embeddings and its `similar` answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import pytest

from tests.integration.pipeline import Stack
from tests.integration.test_ingest_bad_input import write
from tests.integration.test_replica import Replica, cli, cli_env
from workers.db.ingest import ingest_file, ingest_landing
from workers.ops import retention
from workers.ops.retention_actions import Compress
from workers.signals import embed

DAY = "BTCUSDT-trades-2019-04-01"
CHUNKS = ("SELECT count(*) FILTER (WHERE is_compressed), count(*) "
          "FROM timescaledb_information.chunks WHERE hypertable_name = 'btc_ticks'")
SIMILAR_AT = "2019-04-01T15:02:00Z"
LATE_HOURS = "2019-04-01T20:00:00Z"  # replay and replicate take the day's last hours


def compressed_chunks(s: Stack) -> tuple[int, int]:
    with s.admin() as c:
        return c.execute(CHUNKS).fetchone()


def retention_conn(s: Stack):
    return s.db.connect(user="retention_worker", password=s.env.secrets["retention_worker"])


def vectors(s: Stack) -> dict:
    with s.admin() as c:
        return dict(c.execute("SELECT bucket, feature_vector::text FROM signals.btc_embeddings "
                              "ORDER BY bucket").fetchall())


def similar(s: Stack):
    r = s.cli("similar", "--at", SIMILAR_AT, "-k", "5", "--json")
    assert r.returncode == 0, r.stderr
    return _rounded(json.loads(r.stdout))


def _rounded(v):
    """Floats to 12 significant digits: a mean over many windows may be summed in another
    order from one query to the next (last-digit noise), which is not what is compared here."""
    if isinstance(v, float):
        return float(f"{v:.12g}")
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


@dataclass
class Day:
    s: Stack
    before: tuple  # s.state() before compression
    vectors: dict  # embeddings computed from uncompressed ticks
    similar: dict  # `similar` answered from uncompressed ticks
    results: dict  # retention's results by job
    size_before: int
    size_after: int


@pytest.fixture(scope="module")
def day(local_env, shared_data):
    """The day ingested and embedded, then compressed by retention's shipped job
    (compress_after 30 days covers 2019)."""
    s = Stack(local_env)
    try:
        with s.ingest_conn() as conn:
            ingest_file(conn, s.landing(), str(shared_data / f"{DAY}.zip"))
        with s.embed_conn() as conn:
            assert embed.run(conn).embedded > 250
        before, vecs, sim = s.state(), vectors(s), similar(s)
        size = "SELECT hypertable_size('market_data.btc_ticks')"
        with s.admin() as a:
            size_before = a.execute(size).fetchone()[0]
        with retention_conn(s) as conn:
            results = {r.job: r for r in retention.run(conn)}
        with s.admin() as a:
            size_after = a.execute(size).fetchone()[0]
        yield Day(s, before, vecs, sim, results, size_before, size_after)
    finally:
        s.close()


def test_retention_compresses_the_old_chunk_and_bucket_checksums_are_unchanged(day):
    res = day.results["btc_ticks"]
    assert res.outcome == "applied"
    [action] = res.actions
    assert isinstance(action, Compress) and action.chunks >= 1
    assert action.rows == 183_355
    assert compressed_chunks(day.s) == (action.chunks, action.chunks)
    assert day.size_after < day.size_before / 2  # really compressed, not just marked
    assert day.s.state() == day.before  # per-bucket checksums, landing registry, aggregates
    # A second run finds nothing left to compress.
    with retention_conn(day.s) as conn:
        again = {r.job: r for r in retention.run(conn)}
    assert again["btc_ticks"].outcome == "nothing-to-do"


def test_embed_and_similar_read_compressed_windows(day):
    with day.s.admin() as c:
        c.execute("DELETE FROM signals.btc_embeddings")
    with day.s.embed_conn() as conn:
        assert embed.run(conn).embedded == len(day.vectors)
    assert compressed_chunks(day.s)[0] >= 1
    assert vectors(day.s) == day.vectors  # identical vectors from the compressed ticks
    assert similar(day.s) == day.similar


def test_landing_replay_over_compressed_chunks_changes_nothing(day):
    since = int(datetime.fromisoformat(LATE_HOURS).timestamp() * 1e6)
    with day.s.ingest_conn() as conn:
        s = ingest_landing(conn, day.s.landing(), "raw/spot/BTCUSDT/", since_us=since)
    assert s.rows_read > 10_000 and s.buckets_unchanged > 40 and s.inserted == 0
    assert day.s.state() == day.before
    assert compressed_chunks(day.s)[0] >= 1


def test_replicate_reads_compressed_chunks(day, local_env):
    replica = Replica(local_env)
    try:
        env = cli_env(day.s, replica)
        r = cli(day.s, env, "replicate", "--since", LATE_HOURS, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        d = json.loads(r.stdout)
        late = [row for row in day.s.checksums() if row[0].isoformat() >= "2019-04-01T20"]
        assert d["caught_up"] == len(late) > 40 and d["differing"] == []
        assert replica.checksums() == late
        r = cli(day.s, env, "replicate", "--since", LATE_HOURS, "--json")
        assert json.loads(r.stdout)["caught_up"] == 0
    finally:
        replica.db.drop()


def test_late_trades_into_the_compressed_chunk_land_exactly_once(day, tmp_path):
    """New trades (ids the day does not have) for buckets of the compressed chunk, ingested
    twice: each lands once, only their buckets change, and the rerun changes nothing."""
    t0 = 1_554_076_800_000 + 10 * 3_600_000  # 2019-04-01 10:00 UTC, inside the chunk
    late = [f"{200_000_000 + i},4100.5,0.25,1025.125,{t0 + i * 61_000},False,True"
            for i in range(40)]
    path = write(tmp_path, late, name=f"{DAY}-late.csv")
    before = {r[0]: r for r in day.s.checksums()}
    with day.s.ingest_conn() as conn:
        s = ingest_file(conn, day.s.landing(), str(path))
    assert s.inserted == 40
    after = {r[0]: r for r in day.s.checksums()}
    touched = {b for b in after if after[b] != before.get(b)}
    assert len(touched) == len({(t0 + i * 61_000) // 300_000 for i in range(40)})
    assert sum(after[b][1] - before[b][1] for b in touched) == 40
    assert {b: r for b, r in after.items() if b not in touched} == \
        {b: r for b, r in before.items() if b not in touched}
    with day.s.admin() as c:
        ids = c.execute("SELECT trade_id, count(*) FROM market_data.btc_ticks "
                        "WHERE trade_id >= 200000000 GROUP BY 1").fetchall()
        registry = c.execute("SELECT sum((metadata->>'row_count')::int) "
                             "FROM landing.raw_blobs_5m").fetchone()[0]
    assert len(ids) == 40 and all(n == 1 for _, n in ids)
    assert registry == 183_355 + 40  # landing holds them too: a replay brings them back
    state = day.s.state()
    with day.s.ingest_conn() as conn:
        again = ingest_file(conn, day.s.landing(), str(path))
    assert again.inserted == 0 and day.s.state() == state
    assert compressed_chunks(day.s)[0] >= 1
