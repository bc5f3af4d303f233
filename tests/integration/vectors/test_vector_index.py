"""The ivfflat lifecycle: the index the query uses (halfvec), its probes recorded from its
recall, calibration, prewarming, the index replaced when of an older kind, built above its
threshold and rebuilt when the table doubles."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from tests.integration.pipeline import Stack
from tests.integration.vectors.support import (
    DAY,
    T0,
    exact_answers,
    generated,
    held_out,
    index_defs,
    index_names,
    load_generated,
    query_text,
    reader,
)
from workers.db.ingest import ingest_file
from workers.signals import embed, similar, vector_index


def test_halfvec_index_serves_the_query_and_finds_the_exact_neighbours(vectors3k):
    """The query's ORDER BY matches the index expression (the plan uses it); probing every
    list gives the exact answer (float16 order, re-ranked by the float distance), and the
    rule's probes most of it; a time filter that passes few rows still fills k (iterative
    scan)."""
    s = vectors3k
    vecs = generated(3000)
    late = T0 + timedelta(days=30)
    queries = [(late, v) for v in held_out(30, seed=2)] + [(late, v) for v in generated(10, seed=2)]
    queries += [(T0 + timedelta(minutes=5 * i - 61), vecs[i]) for i in range(100, 3000, 300)]
    queries += [(T0 + timedelta(minutes=5 * 30), generated(1, seed=3)[0])]  # 31 rows pass
    truth = exact_answers(s, queries)
    idx = vector_index.current(s.admin())
    assert idx.kind == "halfvec" and idx.lists == vector_index.lists_for(3000)
    recall = []
    with reader(s) as c:
        register_vector(c)
        with c.transaction():
            c.execute(f"SET LOCAL ivfflat.probes = {idx.lists}")
            plan = "\n".join(r[0] for r in c.execute(
                "EXPLAIN " + query_text("knn"), {
                    "q": queries[0][1], "market": "spot", "symbol": "BTCUSDT",
                    "upto": late, "k": 10, "candidates": 20}))
        assert f"Index Scan using {idx.name}" in plan
        for (upto, v), want in zip(queries, truth, strict=True):
            rows, used = similar.nearest(c, v, market="spot", symbol="BTCUSDT", upto=upto,
                                         k=10, probes=idx.lists)
            assert used == idx.lists and [r[0].isoformat() for r in rows] == want
            exact_rows, _ = similar.nearest(c, v, market="spot", symbol="BTCUSDT", upto=upto,
                                            k=10, exact=True)
            assert [r[1] for r in rows] == pytest.approx([r[1] for r in exact_rows], abs=1e-9)
            rows, used = similar.nearest(c, v, market="spot", symbol="BTCUSDT", upto=upto)
            assert used == idx.probes and len(rows) == 10  # as calibrated at the build
            assert all(r[0] <= upto for r in rows)
            recall.append(len({r[0].isoformat() for r in rows} & set(want)) / 10)
    assert np.mean(recall) >= 0.9, recall
    with reader(s) as c:  # `workers similar` takes the same path
        r = similar.query(c, symbol="BTCUSDT", at=T0 + timedelta(minutes=5 * 2500), k=5)
    assert r.index == idx.name and r.probes == idx.probes
    assert len(r.neighbours) == 5


def test_search_keeps_its_settings_on_the_connection_and_notices_when_they_are_lost(vectors3k):
    """One statement per query: the probes are set on the connection once. When the session
    loses them behind the search's back (RESET ALL, a rolled-back transaction, a pool's
    DISCARD ALL) the next query notices from the settings its answer reports and runs again
    with them: probing every list still gives the exact answer, not the default 1 probe's."""
    s = vectors3k
    late = T0 + timedelta(days=30)
    queries = [(late, v) for v in held_out(8, seed=5)]
    truth = exact_answers(s, queries)
    idx = vector_index.current(s.admin())

    def answers(c):
        return [[r[0].isoformat() for r in vector_index.search(c, vector_index.knn_params(
            v, market="spot", symbol="BTCUSDT", upto=upto, k=10), idx.lists)]
            for upto, v in queries]

    def shown(c):  # NULL until pgvector's library is loaded in the session
        return c.execute("SELECT current_setting('ivfflat.probes', true), "
                         "current_setting('ivfflat.iterative_scan', true)").fetchone()

    wanted = (str(idx.lists), "relaxed_order")
    with reader(s) as c:
        register_vector(c)
        assert shown(c) != wanted
        assert answers(c) == truth and shown(c) == wanted
        c.execute("RESET ALL")
        assert shown(c) == ("1", "off")
        assert answers(c) == truth and shown(c) == wanted
        c.execute("DISCARD ALL")
        assert shown(c) == ("1", "off")
        assert answers(c) == truth and shown(c) == wanted
        c.execute("RESET ALL")
        with pytest.raises(LookupError), c.transaction():  # set inside, rolled back
            assert answers(c) == truth
            raise LookupError("roll back")
        assert shown(c) == ("1", "off")
        assert answers(c) == truth and shown(c) == wanted
    # One probe (the default) would not have found them all: the checks above can fail.
    with reader(s) as c:
        register_vector(c)
        one = [[r[0].isoformat() for r in vector_index.search(c, vector_index.knn_params(
            v, market="spot", symbol="BTCUSDT", upto=upto, k=10), 1)] for upto, v in queries]
    assert one != truth


def test_each_build_records_the_probes_its_recall_needs(vectors3k):
    """The build measures its probes on windows of the table (sql/020): the recorded probes
    reach the recall target on that sample, fewer do not (or it is 1), and on other queries,
    answered exactly here, they keep recall@10 above 0.98. The embeddings worker records them
    through the function only."""
    s = vectors3k
    with s.admin() as c:
        name, lists, probes, recall, n = c.execute(
            "SELECT index_name, lists, probes, probes_recall, probes_queries "
            "FROM signals.vector_index_builds ORDER BY built_at DESC LIMIT 1").fetchone()
    idx = vector_index.current(s.admin())
    assert (idx.name, idx.probes) == (name, probes) and idx.query_probes == probes
    assert 1 <= probes <= lists and n >= 30
    assert recall >= vector_index.RECALL_TARGET or probes == lists
    with s.embed_conn() as conn:  # measured again on a new sample: the search's own rule
        cal = vector_index.calibrate(conn, idx)
    assert cal.tried[cal.probes] >= vector_index.RECALL_TARGET or cal.probes == lists
    # From the formula's probes, and above them only because fewer fell short.
    assert min(cal.tried) == vector_index.probes_for(lists) <= cal.probes
    assert all(r < vector_index.RECALL_TARGET for p, r in cal.tried.items() if p < cal.probes)
    # A target the formula misses makes the search go up.
    with s.embed_conn() as conn:
        strict = vector_index.calibrate(conn, idx, target=1.01)
    assert strict.probes == lists and len(strict.tried) > 1
    with s.embed_conn() as conn:  # leave the recorded probes as the build measured them
        vector_index.calibrate(conn, idx)
    vecs = generated(3000)
    queries = [(T0 + timedelta(minutes=5 * i - 61), vecs[i]) for i in range(50, 3000, 60)]
    queries += [(T0 + timedelta(days=30), v) for v in held_out(50, seed=7)]
    truth = exact_answers(s, queries)
    got = []
    with reader(s) as c:
        register_vector(c)
        for upto, v in queries:
            rows, used = similar.nearest(c, v, market="spot", symbol="BTCUSDT", upto=upto)
            assert used == cal.probes
            got.append({r[0].isoformat() for r in rows})
    assert np.mean([len(g & set(t)) / 10 for g, t in zip(got, truth, strict=True)]) >= 0.98
    with s.embed_conn() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE signals.vector_index_builds SET probes = 1")


def test_calibration_waits_while_a_replaced_index_is_still_there(local_env):
    """With two ivfflat indexes the planner may use either: nothing is recorded, the index is
    answered with the formula's probes meanwhile, and the next run that keeps it calibrates."""
    s = Stack(local_env)
    try:
        load_generated(s, generated(2000))
        with s.embed_conn() as conn:
            st = vector_index.ensure(conn, min_rows=1000)
        assert st.action == "built" and st.probes is not None
        with s.admin() as c:
            c.execute("UPDATE signals.vector_index_builds SET probes = NULL")
            c.execute("CREATE INDEX leftover ON signals.btc_embeddings USING ivfflat "
                      "((feature_vector::halfvec(256)) halfvec_cosine_ops) WITH (lists = 5)")
        idx = vector_index.current(s.admin())
        assert idx.probes is None and idx.query_probes == vector_index.probes_for(idx.lists)
        with s.embed_conn() as conn:
            assert vector_index.calibrate(conn, idx) is None
        with s.admin() as c:
            assert c.execute("SELECT probes FROM signals.vector_index_builds").fetchone()[0] \
                is None
            c.execute("DROP INDEX signals.leftover")
        with s.embed_conn() as conn:
            st = vector_index.ensure(conn, min_rows=1000)
        assert st.action == "kept" and st.calibration is not None
        assert vector_index.current(s.admin()).probes == st.probes == st.calibration.probes
    finally:
        s.close()


def test_the_lifecycle_prewarms_the_index_it_uses(vectors3k):
    """The embeddings worker loads the index in use into shared_buffers (pg_prewarm, as its
    own login): every block of it after a build and on a run that keeps it; a name that is
    not an index of signals loads nothing."""
    s = vectors3k
    idx = vector_index.current(s.admin())
    with s.admin() as c:
        blocks = c.execute("SELECT pg_relation_size(%s::regclass) / 8192",
                           [f"signals.{idx.name}"]).fetchone()[0]
    with s.embed_conn() as conn:
        assert vector_index.prewarm(conn, idx.name) == blocks > 0
        assert vector_index.ensure(conn, min_rows=1000).action == "kept"
        assert vector_index.prewarm(conn, "btc_embeddings") is None  # the table, not an index
        assert vector_index.prewarm(conn, "no_such_index'; DROP TABLE x; --") is None


def test_an_index_from_before_halfvec_is_replaced_and_not_used_meanwhile(local_env):
    s = Stack(local_env)
    try:
        load_generated(s, generated(2000))
        old = "btc_embeddings_ivfflat_20240101000000000000"
        with s.admin() as c:  # what sql/010's function built and recorded
            c.execute(f"CREATE INDEX {old} ON signals.btc_embeddings "
                      "USING ivfflat (feature_vector vector_cosine_ops) WITH (lists = 45)")
            c.execute("INSERT INTO signals.vector_index_builds (index_name, rows, lists, "
                      "seconds, built_at) VALUES (%s, 2000, 45, 1, now() - interval '1 day')",
                      [old])
        with reader(s) as c:
            register_vector(c)
            _, used = similar.nearest(c, generated(1, 5)[0], market="spot", symbol="BTCUSDT",
                                      upto=T0 + timedelta(days=30))
        assert used is None  # exact: the query's ORDER BY is not the old index's
        with s.embed_conn() as conn:  # 2,000 rows: not doubled, but the wrong kind
            st = vector_index.ensure(conn, min_rows=1000)
        assert st.action == "rebuilt" and index_names(s) == [st.index]
        assert vector_index.current(s.admin()).kind == "halfvec"
    finally:
        s.close()


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
            builds = c.execute("SELECT rows, lists, replaced, kind, bytes FROM "
                               "signals.vector_index_builds ORDER BY built_at").fetchall()
            n = c.execute("SELECT count(*) FROM signals.btc_embeddings").fetchone()[0]
            size = c.execute("SELECT pg_relation_size(%s::regclass)",
                             [f"signals.{second[0]}"]).fetchone()[0]
        assert builds[0][2] is None and builds[1][2] == first[0]
        assert builds[1][0] == n and builds[1][1] == vector_index.lists_for(n)
        assert [b[3] for b in builds] == ["halfvec", "halfvec"] and builds[1][4] == size
        assert "halfvec(256)) halfvec_cosine_ops" in index_defs(s)[0]
        # The embed role cannot build an index by hand, only through the function.
        with s.embed_conn() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE INDEX x ON signals.btc_embeddings (bucket)")
        with s.embed_conn() as conn, pytest.raises(psycopg.errors.InvalidParameterValue,
                                                        match="lists must be between"):
            conn.execute("SELECT signals.build_embedding_index(0, NULL)")
    finally:
        s.close()
