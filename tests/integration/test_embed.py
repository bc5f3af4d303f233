"""Embeddings on the real day: deterministic, unit norm, incremental, labels only when known."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from tests.integration.pipeline import Stack
from workers.db.ingest import ingest_file
from workers.signals import embed

DAY = "BTCUSDT-trades-2019-04-01"


@pytest.fixture(scope="module")
def day(local_env, shared_data):
    s = Stack(local_env)
    with s.ingest_conn() as conn:
        ingest_file(conn, s.landing(), str(shared_data / f"{DAY}.zip"))
    yield s
    s.close()


def vectors(stack: Stack) -> dict:
    with stack.admin() as c:
        register_vector(c)
        return {b: (v, lab, upd) for b, v, lab, upd in c.execute(
            "SELECT bucket, feature_vector, label_snapshot, updated_at "
            "FROM signals.btc_embeddings ORDER BY bucket")}


def test_embed_day_is_deterministic_unit_norm_and_idempotent(day, local_env, shared_data):
    with day.embed_conn() as conn:
        first = embed.run(conn)
    assert first.embedded + first.skipped_few_trades == 286
    assert first.embedded > 250
    got = vectors(day)
    for v, _, _ in got.values():
        arr = v.to_numpy()
        assert arr.shape == (256,) and abs(float(np.linalg.norm(arr)) - 1) < 1e-5
    with day.embed_conn() as conn:
        again = embed.run(conn)
    assert (again.embedded, again.labels_updated) == (0, 0)
    assert vectors(day) == got  # not even updated_at moved
    # Same input elsewhere -> identical vectors.
    other = Stack(local_env)
    try:
        with other.ingest_conn() as conn:
            ingest_file(conn, other.landing(), str(shared_data / f"{DAY}.csv"))
        with other.embed_conn() as conn:
            embed.run(conn)
        theirs = vectors(other)
        assert {b: v.to_list() for b, (v, _, _) in theirs.items()} == \
            {b: v.to_list() for b, (v, _, _) in got.items()}
    finally:
        other.close()


def test_labels_appear_only_when_their_horizon_has_data(local_env, shared_data, tmp_path):
    s = Stack(local_env)
    try:
        lines = (shared_data / f"{DAY}.csv").read_text().splitlines(keepends=True)
        first, rest = tmp_path / "BTCUSDT-trades-a.csv", tmp_path / "BTCUSDT-trades-b.csv"
        cut = next(i for i, ln in enumerate(lines) if int(ln.split(",")[4]) >= 1554120000000)
        first.write_text("".join(lines[:cut]))  # until 12:00
        rest.write_text("".join(lines[cut:]))
        with s.ingest_conn() as conn:
            ingest_file(conn, s.landing(), str(first))
        with s.embed_conn() as conn:
            embed.run(conn)
        v = vectors(s)
        last = max(v)
        assert last.hour == 11 and last.minute == 55
        assert v[last][1] == {}  # nothing followed yet: keys absent, never zero
        ten_to = [b for b in v if b.hour == 11 and b.minute == 50][0]
        assert set(v[ten_to][1]) == {"fwd_ret_5m"}
        with s.ingest_conn() as conn:
            ingest_file(conn, s.landing(), str(rest))
        with s.embed_conn() as conn:
            r = embed.run(conn)
        assert r.embedded > 100 and r.labels_updated >= 12
        v = vectors(s)
        assert set(v[last][1]) == {"fwd_ret_5m", "fwd_ret_15m", "fwd_ret_60m", "fwd_vol_60m"}
        with s.admin() as c:
            c0, c5 = [float(x[0]) for x in c.execute(
                "SELECT close FROM market_data.btc_ohlcv_5m WHERE bucket_5m IN "
                "('2019-04-01 11:55+00', '2019-04-01 12:00+00') ORDER BY bucket_5m")]
        assert v[last][1]["fwd_ret_5m"] == pytest.approx(np.log(c5 / c0), abs=1e-9)
    finally:
        s.close()


def test_late_backfill_recomputes_only_the_changed_window(day):
    with day.embed_conn() as conn:
        embed.run(conn)
    before = vectors(day)
    # A late trade lands in 12:00 through the normal pipeline: its object and SHA-256 change.
    import tempfile
    from pathlib import Path

    from tests.integration.test_ingest_bad_input import write

    with tempfile.TemporaryDirectory() as d:
        p = write(Path(d), ["999999999,4200.5,3.5,14701.75,1554120001000,False,True"],
                  name="BTCUSDT-trades-late.csv")
        with day.ingest_conn() as conn:
            ingest_file(conn, day.landing(), str(p))
    with day.embed_conn() as conn:
        r = embed.run(conn)
    assert r.embedded == 1
    after = vectors(day)
    changed = [b for b in after if after[b][0] != before[b][0]]
    assert [(b.hour, b.minute) for b in changed] == [(12, 0)]


def test_embeddings_reference_the_aggregate(day):
    with day.admin() as c, pytest.raises(psycopg.errors.ForeignKeyViolation):
        c.execute("INSERT INTO signals.btc_embeddings (symbol, bucket, feature_vector, "
                  "feature_version, source_sha256) VALUES ('BTCUSDT', '2030-01-01', "
                  "array_fill(0.1, ARRAY[256])::vector, 1, repeat('a', 64))")


def test_vectors_of_an_older_feature_version_are_recomputed(day):
    with day.embed_conn() as conn:
        embed.run(conn)
    with day.admin() as c:
        c.execute("UPDATE signals.btc_embeddings SET feature_version = feature_version - 1 "
                  "WHERE bucket IN (SELECT bucket FROM signals.btc_embeddings "
                  "ORDER BY bucket LIMIT 3)")
    with day.embed_conn() as conn:
        r = embed.run(conn)
    assert r.embedded == 3
    with day.admin() as c:
        versions = c.execute("SELECT DISTINCT feature_version FROM signals.btc_embeddings"
                             ).fetchall()
    assert versions == [(embed.features.FEATURE_VERSION,)]
