"""The ivfflat index lifecycle and query-time probes, as rules measured by bench/vectors.py.

* Below MIN_ROWS no index: exact search is fast there, and ivfflat trained on few rows has
  poor recall.
* The index is over `feature_vector::halfvec(256)` (sql/017): half the bytes per probed row
  for the same neighbours; the query re-ranks its candidates by the exact float distance.
* lists = sqrt(rows) at every size. Query cost is about lists + probes * rows / lists row
  distances, so more, smaller lists pay while the probes needed grow slowly: at 100k generated
  windows sqrt (316 lists) answered at recall@10 0.985 in about half the time of rows/1000
  (100 lists). rows/100 (1000 lists) was ~10% faster again at the same recall but took 5x as
  long to build (31 s); pgvector's k-means trains on 50 rows per list, so build cost grows with
  lists squared (1M rows: 1000 lists built in 1-3 min, 2000 lists in 3-8).
* probes = 2.7 ln(lists), rounded up: the probes recall@10 >= 0.985 needed on generated
  windows grew about logarithmically with lists (100 lists: 9; 316: 14-16; 1000 at 1M rows:
  18-19), where sqrt(lists) (pgvector's starting point) over-probes large indexes (32 at 1000
  lists: recall 0.996 at 1.7x the time).
* ...and then checked on the data (calibrate): after each build CALIBRATION_QUERIES random
  windows of the table are answered exactly and through the new index; when the formula's
  probes fall short of RECALL_TARGET there, probes go up by a tenth until they reach it, and
  the build records what it measured (sql/020). Never below the formula: a sample of this size
  estimates recall to about +-0.01, and a downward search stops where the sample happened to
  do well.
* Rebuild when the table has at least doubled since the last build, or when the index in use
  is not the current kind (a vector(256) index from before sql/017): build new, then swap.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from workers.core import logs
from workers.core.errors import Failed
from workers.core.sqlfiles import query as query_sql
from workers.core.sqlfiles import template

MIN_ROWS = 10_000
KIND = "halfvec"  # what build_embedding_index builds; the query must match it to use it
# recall@10 the recorded probes reach on the calibration sample: the 0.98 users are promised
# plus half the sample's error; the sample is of the harder kind (windows of the table asked
# for earlier neighbours, ~0.01 below new windows in bench/vectors.py), which adds margin.
RECALL_TARGET = 0.985
CALIBRATION_QUERIES = 60  # windows per calibration: each costs one exact scan
K = 10

log = logs.get("vector_index")


def lists_for(rows: int) -> int:
    return max(1, round(math.sqrt(rows)))


def probes_for(lists: int) -> int:
    return max(1, min(lists, math.ceil(2.7 * math.log(lists))))


@dataclass(frozen=True)
class Index:
    name: str
    rows: int  # rows when built
    lists: int
    kind: str  # "halfvec" | "vector" (before sql/017)
    probes: int | None = None  # measured by calibrate (sql/020); None: not yet

    @property
    def query_probes(self) -> int:
        """The probes a query uses: the calibrated ones, else the formula's."""
        return self.probes or probes_for(self.lists)


def knn_params(vec, *, market: str, symbol: str, upto, k: int) -> dict:
    """Parameters of knn.sql / knn_exact.sql: 2k candidates by the halfvec distance."""
    return {"q": vec, "market": market, "symbol": symbol, "upto": upto, "k": k,
            "candidates": 2 * k}


def search(conn: psycopg.Connection, params: dict, probes: int) -> list[tuple]:
    """knn.sql through the ivfflat index with `probes`: one prepared statement per query.

    The two settings it needs live on the connection (session level), set only when an answer
    shows they are not the ones wanted: a transaction with SET LOCALs around every query was
    BEGIN, two SETs, the query and COMMIT — five statements, ~0.4 ms of a 4 ms query at 100k
    vectors and most of its tail (bench/vectors.py). Every answer reports the settings it ran
    with, so a connection that never had them, or lost them behind our back (a rolled-back
    transaction, RESET ALL, a pool's DISCARD), or had other probes, is set and asked again;
    so is an answer with fewer than k rows. The settings steer ivfflat scans only, and every
    one of ours comes through here. Prepared: the generic plan always takes the index (a
    custom plan may answer a narrow --at window exactly)."""
    want = f"{int(probes)}/{ITERATIVE_SCAN}"  # as knn.sql's last column reports them
    text = query_sql(__package__, "knn")
    rows = conn.execute(text, params, prepare=True).fetchall()
    if len(rows) < params["k"] or any(r[-1] != want for r in rows):
        _apply(conn, probes)
        rows = conn.execute(text, params, prepare=True).fetchall()
        if any(r[-1] != want for r in rows):  # the server does not keep what it was told
            raise Failed(f"ivfflat settings did not take: wanted {want}, the query ran "
                         f"with {rows[0][-1]}")
    return [r[:-1] for r in rows]


ITERATIVE_SCAN = "relaxed_order"


def _apply(conn: psycopg.Connection, probes: int) -> None:
    conn.execute(template(__package__, "set_probes").format(
        probes=sql.Literal(int(probes)), scan=sql.Literal(ITERATIVE_SCAN)))


@dataclass
class IndexState:
    rows: int
    index: str | None
    built_rows: int | None
    lists: int | None
    action: str  # "none (below threshold)" | "kept" | "built" | "rebuilt"
    seconds: float = 0.0  # this run's build, if any
    probes: int | None = None  # the index's calibrated probes
    calibration: Calibration | None = None  # this run's, if any


def current(conn: psycopg.Connection) -> Index | None:
    """The index in use (the newest recorded build that still exists), if any."""
    row = conn.execute(query_sql(__package__, "current_index")).fetchone()
    return Index(*row) if row else None


def ensure(conn: psycopg.Connection, *, min_rows: int = MIN_ROWS) -> IndexState:
    """Apply the lifecycle rule: build, rebuild (new, then swap) or keep."""
    rows = conn.execute(query_sql(__package__, "embedding_count")).fetchone()[0]
    last = current(conn)
    if last is None and rows < min_rows:
        return IndexState(rows, None, None, None, "none (below threshold)")
    if last is not None and last.kind == KIND and rows < 2 * last.rows:
        drop_replaced(conn)  # leftovers of a swap that timed out earlier
        prewarm(conn, last.name)  # after a restart its buffers are gone; cheap when resident
        cal = calibrate(conn, last) if last.probes is None else None  # built before sql/020
        return IndexState(rows, last.name, last.rows, last.lists, "kept",
                          probes=cal.probes if cal else last.probes, calibration=cal)
    return rebuild(conn, rows=rows, expected=last)


@dataclass
class Calibration:
    probes: int
    recall: float  # recall@K at those probes on the sample
    queries: int
    tried: dict[int, float]  # probes -> recall, in the order measured
    seconds: float


def calibrate(conn: psycopg.Connection, index: Index, *, target: float = RECALL_TARGET,
              queries: int = CALIBRATION_QUERIES) -> Calibration | None:
    """The probes for this index: the formula's, or more when recall@K on a sample of the
    table's windows falls short of `target` with them; recorded with the build. None (nothing
    recorded; the next run tries again) when another ivfflat index is still on the table — the
    planner could pick either — or the sample has no window with K earlier ones."""
    others = [r[0] for r in conn.execute(query_sql(__package__, "ivfflat_indexes"))
              if r[0] != index.name]
    if others:
        log.info("probes not calibrated yet: a replaced index is still there", index=index.name,
                 others=others)
        return None
    t0 = time.monotonic()
    sample = conn.execute(query_sql(__package__, "calibration_sample"), {"n": queries}).fetchall()
    exact = query_sql(__package__, "knn_exact")
    asks, truths = [], []
    for market, symbol, upto, vec in sample:
        params = knn_params(vec, market=market, symbol=symbol, upto=upto, k=K)
        # Short transactions (a swap's DROP INDEX waits for open ones), and one core for each
        # exact scan: readers keep the other, as this runs beside them.
        with conn.transaction():
            conn.execute(query_sql(__package__, "no_parallel_workers"))
            truth = {r[0] for r in conn.execute(exact, params).fetchall()}
        if len(truth) == K:
            asks.append(params)
            truths.append(truth)
    if not asks:
        return None

    tried: dict[int, float] = {}

    def recall(probes: int) -> float:
        if probes not in tried:
            hits = sum(len(truth & {r[0] for r in search(conn, params, probes)})
                       for params, truth in zip(asks, truths, strict=True))
            tried[probes] = hits / (K * len(asks))
        return tried[probes]

    # From the formula's probes, up by a tenth (each step is one index query per window:
    # cheap next to the exact scans) until the target is reached or every list is probed;
    # never down (see the module notes).
    probes = min(index.lists, probes_for(index.lists))
    while recall(probes) < target and probes < index.lists:
        probes = min(index.lists, max(probes + 1, math.ceil(probes * 1.1)))
    cal = Calibration(probes, tried[probes], len(asks), tried, time.monotonic() - t0)
    conn.execute(query_sql(__package__, "record_probes"),
                 [index.name, cal.probes, cal.recall, cal.queries])
    if not conn.autocommit:
        conn.commit()
    log.info("probes calibrated", index=index.name, lists=index.lists, probes=cal.probes,
             recall=round(cal.recall, 4), queries=cal.queries, seconds=round(cal.seconds, 1),
             tried={p: round(r, 4) for p, r in tried.items()})
    return cal


def prewarm(conn: psycopg.Connection, index: str) -> int | None:
    """Load the index into shared_buffers when it takes at most half of them (the table's hot
    pages need the rest); blocks loaded, or None (too big: a warning says what to raise; or no
    pg_prewarm on this server). Queries then read probed lists from memory, not the OS cache."""
    if conn.execute(query_sql(__package__, "no_prewarm")).fetchone()[0]:
        return None
    row = conn.execute(query_sql(__package__, "prewarm_index"), {"index": index}).fetchone()
    if row is None:
        return None
    size, shared, blocks = row
    if blocks is None:
        log.warning("the vector index is more than half of shared_buffers: queries read its "
                    "lists from the OS cache (slower, p95 about 2x); raise shared_buffers "
                    "(stack key primarySharedBuffers) to at least twice the index",
                    index=index, index_mb=round(size / 2**20), shared_buffers_mb=round(
                        shared / 2**20))
    return blocks


def rebuild(conn: psycopg.Connection, *, rows: int | None = None,
            expected: Index | None = None) -> IndexState:
    """Build a new index for the table as it is now and swap it in (also: a forced rebuild)."""
    if rows is None:
        rows = conn.execute(query_sql(__package__, "embedding_count")).fetchone()[0]
        expected = current(conn)
    lists = lists_for(rows)
    t0 = time.monotonic()
    name = conn.execute(query_sql(__package__, "build_index"),
                        [lists, expected.name if expected else None]).fetchone()[0]
    if not conn.autocommit:
        conn.commit()
    seconds = time.monotonic() - t0
    if name is None:  # another worker swapped an index in meanwhile: that one is current
        drop_replaced(conn)
        now = current(conn)
        log.info("index built by another worker meanwhile", index=now.name if now else None)
        return IndexState(rows, now.name if now else None, now.rows if now else None,
                          now.lists if now else None, "kept")
    drop_replaced(conn)
    log.info("index built", index=name, rows=rows, lists=lists, seconds=round(seconds, 1),
             replaced=expected.name if expected else None)
    prewarm(conn, name)
    cal = calibrate(conn, Index(name, rows, lists, KIND))
    return IndexState(rows, name, rows, lists, "rebuilt" if expected else "built", seconds,
                      probes=cal.probes if cal else None, calibration=cal)


def drop_replaced(conn: psycopg.Connection, *, attempts: int = 5) -> int:
    """Drop the indexes a swap replaced. DROP INDEX waits for the table's in-flight readers
    and new readers queue behind it, so each try gives up after the function's lock_timeout
    (1 s), or at once while a build holds the builders' lock; after `attempts` tries the old
    index stays until the next run (it costs writes and space, not answers)."""
    for attempt in range(attempts):
        try:
            with conn.transaction():
                n = conn.execute(query_sql(__package__, "drop_replaced_indexes")).fetchone()[0]
            if n is not None:
                return n
        except psycopg.errors.LockNotAvailable:
            pass
        time.sleep(0.2 * (attempt + 1))
    log.warning("old index not dropped yet: readers held the table; the next run retries",
                attempts=attempts)
    return 0
