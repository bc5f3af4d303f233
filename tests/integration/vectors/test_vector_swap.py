"""Rebuilding and swapping the index while readers query: readers never wait for a build and
always get full, exact answers; what does block them; two embed workers build one index."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from pgvector.psycopg import register_vector

from tests.conftest import REPO
from tests.integration.vectors.support import (
    T0,
    exact_answers,
    generated,
    index_names,
    load_generated,
    reader,
)
from workers.signals import similar, vector_index


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
