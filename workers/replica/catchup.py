"""`workers replicate`: catch the dual-write replica up from landing, then prove equality.

What the replica holds, and so what is compared and repaired: per (market, symbol, 5-minute
bucket) its ticks, its landing registry row and its 5-minute aggregate row; and the stream
offsets. (`ingestion.stream_gaps` and `ingestion.file_loads` are the primary's bookkeeping.)

1. Compare (workers/replica/compare.py), O(changed) for ticks: both servers keep a digest per
   bucket of their own ticks (workers/replica/digests.py), recomputed where writers marked them
   stale; registry and aggregate rows (one per bucket) are digested on the fly. One digest per
   day and kind is compared; only the days that differ are compared bucket by bucket. What
   differs is re-checked from the rows: writes in flight and buckets retention dropped on one
   side are told apart from differences.
2. Catch up (not with --check): every bucket the replica misses or holds differently (ticks,
   registry row or aggregate), and every bucket `ingestion.replica_lag` names, is rebuilt on the
   replica from landing — the bucket's object (SHA-256 checked against the primary's registry)
   and any live-stream parts not yet compacted into it (SHA-256 checked against their stored
   checksum) — up to 64 buckets per transaction: delete the buckets' ticks there, insert the
   landed rows, write the primary's registry row and the object's aggregate (or remove the
   replica's where the primary has none). Landing is read on a few threads, each bucket under
   its lock (shared). Ticks retention removed are not brought back: not where the replica's
   retention drops them, nor where the primary's did. Offsets behind on the replica advance.
3. Compare again (waiting out writes in flight); lag rows of buckets now equal are cleared.
   Buckets still differing are reported, and the command exits 1.
"""

from __future__ import annotations

import json
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import pyarrow as pa

from workers.core import logs
from workers.core.pg import require_autocommit, set_local_utc, sibling
from workers.core.sqlfiles import query
from workers.core.ticks import iso, to_dt, to_us
from workers.db.bucket_locks import xact_lock
from workers.db.load import copy_rows, mark_digests_stale
from workers.landing.parts import read_parts
from workers.landing.rows import bucket_stats, merge
from workers.landing.store import CorruptObject, Landing, object_key
from workers.replica import retained
from workers.replica.compare import DIFFERENCES, KINDS, NAMES, Comparison, compare, lag_buckets
from workers.replica.rows import Key

log = logs.get("replicate")
RETRIES = 5  # a replica transaction that deadlocks with a concurrent writer (retention) again


@dataclass
class Rebuild:
    """One bucket as the replica must hold it."""

    key: Key
    ticks: pa.Table | None  # the landed rows; None: no ticks (retention removed them)
    registry: tuple | None  # the primary's row: uri, size, span, metadata (None: no row)
    ohlcv: dict | None  # the registered object's aggregate (None: none)
    keep_ohlcv: bool = False  # older than a side's aggregate retention: left as it is
    lost: str | None = None  # landing lost or changed what vouches for it: not rebuilt (why)
    keep_ticks: bool = False  # the replica's ticks stay (nothing else holds the bucket)


@dataclass
class Result:
    check_only: bool
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    caught_up: int = 0
    rows_loaded: int = 0
    repaired: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    offsets: dict = field(default_factory=dict)
    lag_cleared: int = 0
    lag_open: int = 0
    differing: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    still_writing: list[str] = field(default_factory=list)
    unrebuilt: list[str] = field(default_factory=list)  # landing lost them: left as they are
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.caught_up or self.lag_cleared or self.offsets.get("advanced"))

    @property
    def ok(self) -> bool:
        return not (self.differing or self.unrebuilt)

    def details(self) -> list[str]:
        b = self.before
        out = [f"before: replica {b['buckets']} buckets / {b['rows']:,} rows; "
               + "; ".join(_kind_text(kind, b["kinds"][kind]) for kind in KINDS)
               + f" (in {b['days_differing']} of {b['days']} days)"]
        for side, r in b["digests_recomputed"].items():
            if r["full"] or r["recomputed"] or r["removed"]:
                out.append(f"digests recomputed on the {side}: {r['recomputed']} bucket(s)"
                           + (" — all of them: ticks changed outside tickstack's writers"
                              if r["full"] else "") + f" ({r['seconds']:.1f} s)")
        if not self.check_only and self.caught_up:
            out.append("repaired: " + ", ".join(f"{self.repaired[k]} bucket(s) of {_many(k)}"
                                                for k in KINDS))
        o = self.offsets
        if o.get("behind") or o.get("ahead"):
            out.append(f"offsets: {o.get('behind', 0)} behind on the replica"
                       + ("" if self.check_only else f" ({o.get('advanced', 0)} advanced)")
                       + f", {o.get('ahead', 0)} ahead (kept: offsets only move forward)")
        a = self.after
        if a.get("retention"):
            out.append(f"retention: {a['retention']} bucket row set(s) dropped by retention on "
                       "one side only (not a difference)")
        if self.in_flight:
            out.append(f"in flight: {len(self.in_flight)} bucket(s) were being written while "
                       "comparing, equal once written")
        out += [f"still being written (not compared): {line}" for line in self.still_writing]
        out += [f"not rebuilt, landing lost it: {line}" for line in self.unrebuilt]
        out += [f"differs: {line}" for line in self.differing[:50]]
        if len(self.differing) > 50:
            out.append(f"… and {len(self.differing) - 50} more")
        return out

    def summary(self) -> str:
        a = self.after
        state = (f"replica {a.get('buckets', 0)} buckets / {a.get('rows', 0):,} rows, primary "
                 f"{a.get('primary_buckets', 0)} / {a.get('primary_rows', 0):,}")
        if self.differing:
            kinds = a.get("kinds", {})
            what = ", ".join(f"{_many(k)} {sum(kinds[k][d] for d in DIFFERENCES)}"
                             for k in KINDS if kinds and sum(kinds[k][d] for d in DIFFERENCES))
            return f"{len(self.differing)} bucket(s) differ ({what}) — {state}; lag rows " \
                   f"open {self.lag_open}"
        verb = "compared" if self.check_only else f"caught up {self.caught_up} bucket(s) " \
            f"({self.rows_loaded:,} rows) from landing, then compared"
        return f"{verb}: all {a.get('buckets', 0)} buckets equal (ticks: count + checksum; " \
               f"registry rows, OHLCV bars; {a.get('days', 0)} day digests) — {state}" \
               f"; lag rows cleared {self.lag_cleared}, open {self.lag_open}"

    def as_dict(self) -> dict:
        return {"check_only": self.check_only, "before": self.before, "after": self.after,
                "caught_up": self.caught_up, "rows_loaded": self.rows_loaded,
                "repaired": self.repaired, "offsets": self.offsets,
                "lag_cleared": self.lag_cleared, "lag_open": self.lag_open,
                "differing": self.differing, "in_flight": self.in_flight,
                "still_writing": self.still_writing, "unrebuilt": self.unrebuilt,
                "changed": self.changed,
                "did": self.summary(), "seconds": round(self.seconds, 3)}


def _many(kind: str) -> str:
    """'ticks', 'registry rows', 'OHLCV bars'."""
    return NAMES[kind] + ("" if NAMES[kind].endswith("s") else "s")


def _kind_text(kind: str, c: dict) -> str:
    return (f"{_many(kind)}: missing {c['missing']}, different {c['different']}, only on the "
            f"replica {c['extra']}")


def landed(primary: psycopg.Connection, landing: Landing, key: Key,
           horizons: dict[str, dict]) -> Rebuild | None:
    """The bucket as the replica must hold it: the landed rows (object + uncompacted stream
    parts, SHA-256 verified), the primary's registry row and the object's aggregate — read under
    the bucket's lock (shared), so no writer changes them in between. None: landing holds
    nothing of it but the primary holds something (left alone; the comparison after reports
    it). Neither holding anything: the replica keeps only its ticks (they may be the last copy)."""
    market, symbol, bucket = key
    args = [[market], [symbol], [to_dt(bucket)]]
    with primary.transaction():
        xact_lock(primary, [key], shared=True)
        reg = primary.execute(query(__package__, "registry_rows"), args).fetchone()
        try:  # a lost or changed object fails its bucket, not the run (the audit names it)
            obj = (landing.read_verified(landing.key_of(reg[3]), json.loads(reg[6])["sha256"])
                   .table if reg else None)
            parts = read_parts(landing, market, symbol, bucket)
        except landing.s3.exceptions.NoSuchKey:
            return Rebuild(key, None, None, None, lost=f"{reg[3] if reg else 'a part'}: missing")
        except CorruptObject as e:
            return Rebuild(key, None, None, None, lost=str(e))
        holds = bool(primary.execute(query(__package__, "holding_ticks"), args).fetchone())
        bar = primary.execute(query(__package__, "has_ohlcv_bar"),
                              [market, symbol, args[2][0]]).fetchone()
    tables = ([obj] if obj is not None else []) + [t for _, t in parts]
    if not tables:  # neither landing nor the primary holds any of it: the replica's registry
        # row and bar go (pointers and aggregates of nothing); its ticks, if any, stay
        lands = reg or landing.exists(object_key(market, symbol, bucket))  # unregistered?
        return Rebuild(key, None, None, None, keep_ticks=True) if not (
            lands or holds or bar) else None
    ticks = tables[0] if len(tables) == 1 else merge(tables[0], pa.concat_tables(tables[1:])
                                                       ).table
    when = to_dt(bucket)

    def before(side: str, kind: str) -> bool:
        cut = horizons[side].get(retained.TABLE_OF[kind])
        return cut is not None and when < cut

    if before("replica", "ticks") or (not holds and before("primary", "ticks")):
        ticks = None  # retention removed them (or will): not brought back
    stats = bucket_stats(obj)["ohlcv"] if obj is not None else None
    return Rebuild(key, ticks, tuple(reg[3:]) if reg else None, stats,
                   before("replica", "ohlcv") or before("primary", "ohlcv"))


def _write(replica: psycopg.Connection, got: list[Rebuild], cmp: Comparison) -> int:
    """One transaction on the replica: these buckets become what `got` says."""
    keys = [g.key for g in got]
    rows = 0
    with replica.transaction():
        set_local_utc(replica)
        mark_digests_stale(replica, keys)
        replica.execute(query(__package__, "delete_buckets"),
                        _cols([g.key for g in got if not g.keep_ticks]))
        with replica.cursor() as cur:  # the buckets are empty now: COPY, no conflict check
            for g in got:
                if g.ticks is not None and g.ticks.num_rows:
                    copy_rows(cur, "market_data.btc_ticks", g.key[:2], [g.ticks])
                    rows += g.ticks.num_rows
        put = [(*g.key[:2], to_dt(g.key[2]), *g.registry) for g in got if g.registry]
        if put:
            replica.cursor().executemany(query(__package__, "put_registry"), put)
        gone = [g.key for g in got if not g.registry
                and cmp.replica.get(g.key) and cmp.replica[g.key].registry]
        if gone:
            replica.execute(query(__package__, "delete_registry"), _cols(gone))
        bars = [(*g.key[:2], to_dt(g.key[2]), s["open"], s["high"], s["low"], s["close"],
                 s["volume"], s["quote_volume"], s["trade_count"], s["buy_volume"],
                 s["first_trade_id"], s["last_trade_id"])
                for g in got if g.ohlcv and not g.keep_ohlcv for s in [g.ohlcv]]
        if bars:
            # The primary writers' own upsert (workers/db/sql): the same bar on both servers.
            replica.cursor().executemany(query("workers.db", "upsert_ohlcv"), bars)
        gone = [g.key for g in got if not g.ohlcv and not g.keep_ohlcv
                and cmp.replica.get(g.key) and cmp.replica[g.key].ohlcv]
        if gone:
            replica.execute(query(__package__, "delete_ohlcv"), _cols(gone))
    return rows


def _cols(keys: list[Key]) -> list[list]:
    return [[k[0] for k in keys], [k[1] for k in keys], [to_dt(k[2]) for k in keys]]


def catch_up(primary: psycopg.Connection, replica: psycopg.Connection, landing: Landing,
             keys: list[Key], cmp: Comparison, *, readers: int = 3, per_transaction: int = 64,
             lost: list[Rebuild] | None = None) -> tuple[int, int]:
    """Rebuild these buckets on the replica from landing: (buckets rebuilt, rows inserted).
    Buckets landing does not hold are left alone (reported by the comparison after); those
    whose registered object landing lost or changed too, and are added to `lost`."""
    caught = rows = 0
    conns = [primary] + [sibling(primary) for _ in range(readers - 1)]
    pool: queue.SimpleQueue = queue.SimpleQueue()
    for c in conns:
        pool.put(c)

    def read(key: Key) -> Rebuild | None:
        c = pool.get()
        try:
            return landed(c, landing, key, cmp.horizons)
        finally:
            pool.put(c)

    try:
        with ThreadPoolExecutor(readers) as ex:
            for i in range(0, len(keys), per_transaction):
                # Where retention stands now (readers are idle between batches): a bucket it
                # dropped meanwhile is not brought back.
                cmp.horizons = {"primary": retained.horizons(primary),
                                "replica": retained.horizons(replica)}
                got = [g for g in ex.map(read, keys[i:i + per_transaction]) if g is not None]
                if lost is not None:
                    lost += [g for g in got if g.lost]
                got = [g for g in got if not g.lost and not _idle(g, cmp)]
                if not got:
                    continue
                rows += _retrying(lambda got=got: _write(replica, got, cmp))
                caught += len(got)
                log.info("buckets caught up", buckets=len(got), first=iso(got[0].key[2]),
                         last=iso(got[-1].key[2]))
    finally:
        for c in conns[1:]:
            c.close()
    return caught, rows


def _idle(g: Rebuild, cmp: Comparison) -> bool:
    """Only the replica's ticks hold this bucket (kept): nothing to remove, nothing to do."""
    r = cmp.replica.get(g.key)
    return g.keep_ticks and not (r and (r.registry or r.ohlcv))


def _retrying(fn):
    """A transaction that lost to a concurrent writer is rolled back whole and run again: a
    deadlock or serialization conflict (retention deleting the same rows), or a dual-write
    that committed the same ticks after this transaction emptied their bucket (the retry's
    delete removes them, its COPY loads the landed rows)."""
    for attempt in range(1, RETRIES + 1):
        try:
            return fn()
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
                psycopg.errors.UniqueViolation) as e:
            if attempt == RETRIES:
                raise
            log.warning("replica transaction retried", attempt=attempt,
                        error=type(e).__name__)
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


def offsets(primary: psycopg.Connection, replica: psycopg.Connection) -> dict:
    """Offsets behind (or missing) on the replica, and ahead of the primary there."""
    p, r = ({(s, m, y): (i, t) for s, m, y, i, t in c.execute(query(__package__, "offsets"))}
            for c in (primary, replica))
    behind = sorted(k for k in p if k not in r or r[k][0] < p[k][0])
    ahead = sorted(k for k in r if k not in p or r[k][0] > p[k][0])
    return {"behind": len(behind), "ahead": len(ahead),
            "rows": [(*k, *p[k]) for k in behind]}


def sync_offsets(replica: psycopg.Connection, behind: list[tuple]) -> int:
    with replica.transaction():
        for r in behind:
            replica.execute(query("workers.db", "advance_offset"), list(r))
    return len(behind)


def run(primary: psycopg.Connection, replica: psycopg.Connection, landing: Landing, *,
        check_only: bool = False, since: datetime | None = None, settle: float = 0.0
        ) -> Result:
    """`settle`: how long a difference must hold still before it is reported (the dual-write's
    delivery bound, workers/replica/writer.py delivery_bound)."""
    t0 = time.monotonic()
    for c in (primary, replica):
        require_autocommit(c, "replicate")
    res = Result(check_only)
    started = primary.execute(query(__package__, "clock_now")).fetchone()[0]
    # Catching up rebuilds what differs anyway (a write in flight included): only the final
    # comparison waits for writers.
    cmp = compare(primary, replica, since, settle if check_only else 0.0)
    res.before = cmp.state()
    off = offsets(primary, replica)
    lagging = [k for k in lag_buckets(primary) if since is None or k[2] >= to_us(since)]
    if not check_only:
        before = cmp
        todo = sorted(set(cmp.to_rebuild()) | set(lagging))
        lost: list[Rebuild] = []
        res.caught_up, res.rows_loaded = catch_up(primary, replica, landing, todo, cmp,
                                                  lost=lost)
        res.unrebuilt = [f"{g.key[0]} {g.key[1]} {iso(g.key[2])}: {g.lost}" for g in lost]
        off["advanced"] = _retrying(lambda: sync_offsets(replica, off["rows"]))
        if todo or cmp.differing():
            cmp = compare(primary, replica, since, settle)
        for k in todo:
            for kind in KINDS:
                if before.verdict(k, kind) in DIFFERENCES and cmp.verdict(k, kind) is None:
                    res.repaired[kind] += 1
    res.offsets = {k: v for k, v in off.items() if k != "rows"}
    res.after = cmp.state()
    bad = set(cmp.differing())
    res.differing = [cmp.describe(k) for k in sorted(bad)]
    res.in_flight = [f"{k[0]} {k[1]} {iso(k[2])}" for k in sorted(cmp.in_flight)]
    res.still_writing = [f"{k[0]} {k[1]} {iso(k[2])}" for k in sorted(cmp.still_writing)]
    if not check_only:
        done = [k for k in lagging if k not in bad and k not in cmp.still_writing]
        if done:
            res.lag_cleared = primary.execute(query(__package__, "clear_lag"),
                                              [*_cols(done), started]).rowcount
    res.lag_open = primary.execute(query(__package__, "open_lag_count")).fetchone()[0]
    res.seconds = time.monotonic() - t0
    return res
