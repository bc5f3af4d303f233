"""The ivfflat lifecycle, its swap while readers query, and `similar` on real windows."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from tests.conftest import REPO
from tests.integration.pipeline import Stack
from workers.db.ingest import ingest_file
from workers.signals import embed, similar, vector_index

DAY = "BTCUSDT-trades-2019-04-01"


def index_names(stack: Stack) -> list[str]:
    with stack.admin() as c:
        return [r[0] for r in c.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'signals' "
            "AND tablename = 'btc_embeddings' AND indexdef LIKE '%%ivfflat%%' ORDER BY 1")]


def index_defs(stack: Stack) -> list[str]:
    with stack.admin() as c:
        return [r[0] for r in c.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'signals' "
            "AND tablename = 'btc_embeddings' AND indexdef LIKE '%%ivfflat%%'")]


T0 = datetime(2018, 1, 1, tzinfo=UTC)


def generated(n: int, seed: int = 1) -> np.ndarray:
    """Unit vectors around 20 centres: clustered, as market windows are. Another seed draws
    other centres too: windows unlike any in a table made with the first."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 256))
    v = centres[rng.integers(0, 20, n)] + rng.normal(scale=0.7, size=(n, 256))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def held_out(n: int, seed: int) -> np.ndarray:
    """New windows like those of generated(n) (its centres, other draws): what a new market
    window is to a table of past ones."""
    centres = np.random.default_rng(1).normal(size=(20, 256))  # generated()'s, seed 1
    rng = np.random.default_rng([seed, 1])
    v = centres[rng.integers(0, 20, n)] + rng.normal(scale=0.7, size=(n, 256))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def load_generated(stack: Stack, vecs: np.ndarray, first: int = 0) -> None:
    """Windows first.. (5 minutes apart from T0) with these vectors, and their aggregate rows
    (the foreign key's target), as the owner: what the benchmark loads, in small."""
    buckets = [T0 + timedelta(minutes=5 * (first + i)) for i in range(len(vecs))]
    with stack.admin() as c:
        with c.transaction(), c.cursor() as cur, cur.copy(
                "COPY market_data.btc_ohlcv_5m (market, symbol, bucket_5m, open, high, low, "
                "close, volume, quote_volume, trade_count, buy_volume, first_trade_id, "
                "last_trade_id) FROM STDIN") as cp:
            for i, b in enumerate(buckets):
                cp.write_row(("spot", "BTCUSDT", b, 1, 1, 1, 1, 1, 1, 1, 0, first + i, first + i))
        c.execute("ANALYZE market_data.btc_ohlcv_5m")
        register_vector(c)
        with c.transaction(), c.cursor() as cur, cur.copy(
                "COPY signals.btc_embeddings (market, symbol, bucket, feature_vector, "
                "feature_version, source_sha256) FROM STDIN (FORMAT binary)") as cp:
            cp.set_types(["text", "text", "timestamptz", "vector", "int2", "text"])
            for b, v in zip(buckets, vecs, strict=True):
                cp.write_row(("spot", "BTCUSDT", b, v, 2, "0" * 64))


def reader(stack: Stack):
    return stack.db.connect(user="reader", password=stack.env.secrets["reader"])


def exact_answers(stack: Stack, queries: list[tuple[datetime, np.ndarray]]) -> list[list[str]]:
    with reader(stack) as c:
        register_vector(c)
        return [[r[0].isoformat() for r in similar.nearest(
            c, v, market="spot", symbol="BTCUSDT", upto=upto, k=10, exact=True)[0]]
            for upto, v in queries]


@pytest.fixture()
def vectors3k(local_env):
    """3,000 generated windows, indexed by the lifecycle rule."""
    s = Stack(local_env)
    load_generated(s, generated(3000))
    with s.embed_conn() as conn:
        assert vector_index.ensure(conn, min_rows=1000).action == "built"
    yield s
    s.close()


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


def query_text(name: str) -> str:
    from workers.core.sqlfiles import query

    return query("workers.signals", name)


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


def test_rebuild_and_swap_while_a_reader_process_queries(vectors3k, tmp_path):
    """Readers never wait for a build and always get full, exact answers across swaps."""
    s = vectors3k
    late = T0 + timedelta(days=30)
    queries = [(late, v) for v in generated(20, seed=4)]
    truth = exact_answers(s, queries)
    stop = tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.knn_reader",
         s.db.cluster.dsn(s.db.name, user="reader"), "1000", str(stop)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**subprocess.os.environ, "PGPASSWORD": s.env.secrets["reader"]})
    proc.stdin.write(json.dumps([[u.isoformat(), v.tolist()] for u, v in queries]))
    proc.stdin.close()
    # Its output is drained as it comes: a full pipe would stop the reader between queries
    # (at ~1 ms a query the 64 KB pipe fills during the swaps).
    lines: list[dict] = []
    drain = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in proc.stdout))
    drain.start()
    while len(lines) < 5:  # it is querying
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    swaps = []
    with s.embed_conn() as conn:
        for _ in range(3):
            t0 = time.time()
            st = vector_index.rebuild(conn)
            swaps.append((t0, time.time(), st.index))
            assert st.action == "rebuilt"
    time.sleep(0.5)
    stop.touch()
    drain.join(timeout=60)  # to EOF: the reader stops at the file
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    errors = [x["error"] for x in lines if "error" in x]
    assert errors == []
    assert all(x["buckets"] == truth[x["i"]] for x in lines)
    assert all(x["probes"] == 1000 for x in lines)  # the index path, every time
    assert any(x["t1"] < swaps[0][0] for x in lines) and any(x["t0"] > swaps[-1][1]
                                                             for x in lines)
    assert index_names(s) == [swaps[-1][2]]


def test_what_blocks_readers_during_a_swap(vectors3k):
    """A build holds no lock readers wait for; the old index's DROP does, so it gives up
    after lock_timeout while a reader holds the table, and readers queued behind it go on;
    the next run drops it."""
    s = vectors3k
    q = {"q": generated(1, 6)[0], "market": "spot", "symbol": "BTCUSDT", "k": 10,
         "upto": T0 + timedelta(days=30)}
    before = vector_index.current(s.admin())
    with s.embed_conn() as builder:
        builder.autocommit = False  # the build's transaction stays open
        new = builder.execute("SELECT signals.build_embedding_index(%s, %s)",
                              [before.lists, before.name]).fetchone()[0]
        with reader(s) as c:  # not blocked by the SHARE lock of the open build
            register_vector(c)
            c.execute("SET statement_timeout = '20s'")
            rows, used = similar.nearest(c, q["q"], market="spot", symbol="BTCUSDT",
                                         upto=q["upto"])
            assert len(rows) == 10 and used is not None
        builder.commit()
    assert sorted(index_names(s)) == sorted([before.name, new])
    holder = reader(s)
    holder.autocommit = False
    register_vector(holder)
    holder.execute("SELECT count(*) FROM signals.btc_embeddings")  # holds ACCESS SHARE
    try:
        result = {}
        with s.embed_conn() as conn:
            t = threading.Thread(target=lambda: result.update(
                dropped=vector_index.drop_replaced(conn, attempts=1)))
            t.start()
            with s.admin() as a:  # wait until the DROP is queued behind the holder
                for _ in range(200):
                    if a.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND "
                                 "mode = 'AccessExclusiveLock'").fetchone()[0]:
                        break
                    time.sleep(0.01)
                else:
                    pytest.fail("the DROP never waited for the reader's lock")
            with reader(s) as c:  # queued behind the DROP, released when it gives up
                register_vector(c)
                c.execute("SET statement_timeout = '20s'")
                rows, _ = similar.nearest(c, q["q"], market="spot", symbol="BTCUSDT",
                                          upto=q["upto"])
                assert len(rows) == 10
            t.join(timeout=30)
        assert result == {"dropped": 0}
        assert sorted(index_names(s)) == sorted([before.name, new])
    finally:
        holder.rollback()
        holder.close()
    with s.embed_conn() as conn:
        st = vector_index.ensure(conn, min_rows=1000)
    assert st.action == "kept" and st.index == new and index_names(s) == [new]


def test_two_embed_workers_at_once_build_one_index(vectors3k):
    """The table doubled; two `workers embed` see it at once: one builds, the other waits and
    keeps what the first swapped in (compare-and-swap in build_embedding_index)."""
    s = vectors3k
    load_generated(s, generated(3000, seed=9), first=3000)
    env = {**s.cli_env(), "TICKSTACK_VECTOR_INDEX_MIN_ROWS": "1000"}
    procs = [subprocess.Popen([sys.executable, "-m", "workers", "embed", "--json"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    results = sorted(json.loads(o.strip().splitlines()[-1])["index"] for o, _ in outs)
    with s.admin() as c:
        builds = c.execute("SELECT index_name, rows FROM signals.vector_index_builds "
                           "ORDER BY built_at").fetchall()
    assert len(builds) == 2 and builds[1][1] == 6000  # the fixture's build, then one more
    assert index_names(s) == [builds[1][0]]
    assert results[0].startswith("kept: " + builds[1][0])
    assert results[1].startswith("rebuilt: " + builds[1][0])


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
