"""`workers replicate`: catch the dual-write replica up from landing, then prove equality.

1. Compare, O(changed) rather than O(all): both servers keep a digest per (market, symbol,
   5-minute bucket) of their own ticks (workers/replica/digests.py): row count and a hash over
   every tick's values. Digests the writers marked stale since the last comparison are
   recomputed from the ticks first (every digest, after a change no writer marked); then one
   digest per day is compared, and only the days that differ are compared bucket by bucket.
2. Catch up (not with --check): every bucket the replica misses or holds differently, and every
   bucket `ingestion.replica_lag` names, is rebuilt on the replica from landing — the bucket's
   object (SHA-256 checked against the primary's registry) and any live-stream parts not yet
   compacted into it (SHA-256 checked against their stored checksum) — up to 64 buckets per
   transaction: delete the buckets' ticks there, insert the landed rows, upsert registry +
   aggregate. Landing is read on a few threads, each bucket under its lock (shared).
3. Compare again; lag rows of buckets now equal are cleared. Buckets still differing are
   reported, and the command exits 1.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import pyarrow as pa

from workers.core import logs
from workers.core.errors import Failed
from workers.core.pg import require_autocommit, sibling
from workers.core.sqlfiles import query
from workers.core.ticks import iso, to_dt, to_us
from workers.db.bucket_locks import xact_lock
from workers.db.load import BucketLoad, advance_offset, load, mark_digests_stale
from workers.db.stream_commit import insert_ticks
from workers.landing.parts import read_parts
from workers.landing.store import Landing, bucket_stats, merge
from workers.replica import digests

log = logs.get("replicate")


Key = tuple[str, str, int]  # (market, symbol, bucket µs)


class ReplicateError(Failed):
    pass


@dataclass
class Comparison:
    """Bucket digests of the days that differ (the rest are equal), and each side's totals."""

    primary: dict[Key, tuple[int | None, int | None]]
    replica: dict[Key, tuple[int | None, int | None]]
    totals: dict = field(default_factory=dict)  # buckets, rows per side; days compared/differing
    refreshed: dict = field(default_factory=dict)  # digests recomputed per side

    @property
    def missing(self) -> list[Key]:
        return sorted(k for k in self.primary if k not in self.replica)

    @property
    def extra(self) -> list[Key]:
        return sorted(k for k in self.replica if k not in self.primary)

    @property
    def different(self) -> list[Key]:
        return sorted(k for k in self.primary if k in self.replica
                      and self.primary[k] != self.replica[k])

    def differing(self) -> list[Key]:
        return sorted(set(self.missing) | set(self.extra) | set(self.different))

    def describe(self, k: Key) -> str:
        p, r = self.primary.get(k), self.replica.get(k)
        name = f"{k[0]} {k[1]} {iso(k[2])}"
        if r is None:
            return f"{name}: missing on the replica (primary {p[0]} rows)"
        if p is None:
            return f"{name}: only on the replica ({r[0]} rows)"
        if p[0] is None or r[0] is None:
            return f"{name}: digest not recomputed yet (written while comparing)"
        if p[0] != r[0]:
            return f"{name}: {p[0]} rows on the primary, {r[0]} on the replica"
        return f"{name}: same row count ({p[0]}), different content (checksum)"


@dataclass
class Result:
    check_only: bool
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    caught_up: int = 0
    rows_loaded: int = 0
    lag_cleared: int = 0
    lag_open: int = 0
    differing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.caught_up or self.lag_cleared)

    @property
    def ok(self) -> bool:
        return not self.differing

    def details(self) -> list[str]:
        b = self.before
        out = [f"before: replica {b['buckets']} buckets / {b['rows']:,} rows; missing "
               f"{b['missing']}, different {b['different']}, only on the replica {b['extra']}"
               f" (in {b['days_differing']} of {b['days']} days)"]
        for side, r in b["digests_recomputed"].items():
            if r["full"] or r["recomputed"] or r["removed"]:
                out.append(f"digests recomputed on the {side}: {r['recomputed']} bucket(s)"
                           + (" — all of them: ticks changed outside tickstack's writers"
                              if r["full"] else "") + f" ({r['seconds']:.1f} s)")
        out += [f"differs: {line}" for line in self.differing[:50]]
        if len(self.differing) > 50:
            out.append(f"… and {len(self.differing) - 50} more")
        return out

    def summary(self) -> str:
        a = self.after
        state = (f"replica {a.get('buckets', 0)} buckets / {a.get('rows', 0):,} rows, primary "
                 f"{a.get('primary_buckets', 0)} / {a.get('primary_rows', 0):,}")
        if self.differing:
            return f"{len(self.differing)} bucket(s) differ — {state}; lag rows open " \
                   f"{self.lag_open}"
        verb = "compared" if self.check_only else f"caught up {self.caught_up} bucket(s) " \
            f"({self.rows_loaded:,} rows) from landing, then compared"
        return f"{verb}: all {a.get('buckets', 0)} buckets equal (count + checksum, " \
               f"{a.get('days', 0)} day digests) — {state}" \
               f"; lag rows cleared {self.lag_cleared}, open {self.lag_open}"

    def as_dict(self) -> dict:
        return {"check_only": self.check_only, "before": self.before, "after": self.after,
                "caught_up": self.caught_up, "rows_loaded": self.rows_loaded,
                "lag_cleared": self.lag_cleared, "lag_open": self.lag_open,
                "differing": self.differing, "changed": self.changed, "did": self.summary(),
                "seconds": round(self.seconds, 3)}


def compare(primary: psycopg.Connection, replica: psycopg.Connection,
            since: datetime | None = None) -> Comparison:
    """Refresh stale digests on both servers at once, compare per day, then per bucket within
    the days that differ."""
    with ThreadPoolExecutor(2) as ex:
        fresh = list(ex.map(lambda c: digests.refresh(c, since), (primary, replica)))
        pd, rd = ex.map(lambda c: digests.days(c, since), (primary, replica))
    differing = sorted(k for k in pd.keys() | rd.keys() if pd.get(k) != rd.get(k))
    with ThreadPoolExecutor(2) as ex:
        pb, rb = ex.map(lambda c: digests.buckets(c, differing, since), (primary, replica))
    totals = {"days": len(pd.keys() | rd.keys()), "days_differing": len(differing),
              "primary_buckets": sum(d.buckets for d in pd.values()),
              "primary_rows": sum(d.rows for d in pd.values()),
              "buckets": sum(d.buckets for d in rd.values()),
              "rows": sum(d.rows for d in rd.values())}
    refreshed = {side: {"full": f.full, "recomputed": f.recomputed, "removed": f.removed,
                        "seconds": round(f.seconds, 3)}
                 for side, f in zip(("primary", "replica"), fresh, strict=True)}
    return Comparison(pb, rb, totals, refreshed)


def lag_buckets(primary: psycopg.Connection) -> list[Key]:
    return [(m, s, to_us(b)) for m, s, b in primary.execute(
        "SELECT market, symbol, bucket_5m FROM ingestion.replica_lag ORDER BY 1, 2, 3")]


def landed_rows(primary: psycopg.Connection, landing: Landing, key: Key
                ) -> tuple[pa.Table | None, BucketLoad | None]:
    """The bucket's rows as landed (object + uncompacted stream parts), SHA-256 verified —
    read under the bucket's lock (shared), so no writer changes them in between."""
    market, symbol, bucket = key
    with primary.transaction():
        xact_lock(primary, [key], shared=True)
        reg = primary.execute(
            "SELECT s3_uri, metadata->>'sha256', object_size_bytes FROM landing.raw_blobs_5m "
            "WHERE market = %s AND asset = %s AND bucket_5m = %s",
            [market, symbol, to_dt(bucket)]).fetchone()
        tables = []
        if reg:
            uri, sha, _ = reg
            tables.append(landing.read_verified(landing.key_of(uri), sha).table)
        parts = read_parts(landing, market, symbol, bucket)
    tables += [t for _, t in parts]
    if not tables:
        return None, None
    table = tables[0] if len(tables) == 1 else merge(tables[0], pa.concat_tables(tables[1:])
                                                       ).table
    if reg and not parts:
        return table, BucketLoad(market, symbol, bucket, table, False, reg[0], reg[1], reg[2],
                                 bucket_stats(table))
    return table, None


def catch_up(primary: psycopg.Connection, replica: psycopg.Connection, landing: Landing,
             keys: list[Key], *, readers: int = 3, per_transaction: int = 64
             ) -> tuple[int, int]:
    """Rebuild these buckets on the replica from landing: (buckets rebuilt, rows inserted).
    Buckets landing does not hold are left alone (reported by the comparison after)."""
    caught = rows = 0
    conns = [primary] + [sibling(primary) for _ in range(readers - 1)]
    pool: queue.SimpleQueue = queue.SimpleQueue()
    for c in conns:
        pool.put(c)

    def read(key: Key):
        c = pool.get()
        try:
            return key, *landed_rows(c, landing, key)
        finally:
            pool.put(c)

    try:
        with ThreadPoolExecutor(readers) as ex:
            for i in range(0, len(keys), per_transaction):
                got = [g for g in ex.map(read, keys[i:i + per_transaction]) if g[1] is not None]
                if not got:
                    continue
                with replica.transaction():
                    mark_digests_stale(replica, [k for k, _, _ in got])
                    replica.execute(query(__package__, "delete_buckets"), [
                        [k[0] for k, _, _ in got], [k[1] for k, _, _ in got],
                        [to_dt(k[2]) for k, _, _ in got]])
                    full = [bl for _, _, bl in got if bl is not None]
                    if full:  # registered, complete buckets: registry and aggregate too
                        rows += load(replica, full, source="replicate")
                    for (market, symbol, _), table, bl in got:
                        if bl is None:  # an open stream bucket: ticks
                            rows += insert_ticks(replica, market, symbol, table)
                caught += len(got)
                log.info("buckets caught up", buckets=len(got), first=iso(got[0][0][2]),
                         last=iso(got[-1][0][2]))
    finally:
        for c in conns[1:]:
            c.close()
    return caught, rows


def sync_offsets(primary: psycopg.Connection, replica: psycopg.Connection) -> None:
    rows = primary.execute("SELECT source, market, symbol, last_trade_id, last_event_time "
                           "FROM ingestion.stream_offsets").fetchall()
    with replica.transaction():
        for r in rows:
            advance_offset(replica, *r)


def run(primary: psycopg.Connection, replica: psycopg.Connection, landing: Landing, *,
        check_only: bool = False, since: datetime | None = None) -> Result:
    t0 = time.monotonic()
    for c in (primary, replica):
        require_autocommit(c, "replicate")
    res = Result(check_only)
    cmp = compare(primary, replica, since)
    res.before = _state(cmp)
    lagging = lag_buckets(primary)
    if not check_only:
        todo = sorted(set(cmp.missing) | set(cmp.different) | {
            k for k in lagging if since is None or k[2] >= to_us(since)})
        res.caught_up, res.rows_loaded = catch_up(primary, replica, landing, todo)
        if todo:
            cmp = compare(primary, replica, since)
        sync_offsets(primary, replica)
    res.after = _state(cmp)
    bad = set(cmp.differing())
    res.differing = [cmp.describe(k) for k in sorted(bad)]
    if not check_only:
        done = [k for k in lagging if k not in bad
                and (since is None or k[2] >= to_us(since))]
        if done:
            primary.execute(
                "DELETE FROM ingestion.replica_lag WHERE (market, symbol, bucket_5m) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[]))",
                [[m for m, _, _ in done], [s for _, s, _ in done],
                 [to_dt(b) for _, _, b in done]])
        res.lag_cleared = len(done)
    res.lag_open = primary.execute("SELECT count(*) FROM ingestion.replica_lag").fetchone()[0]
    res.seconds = time.monotonic() - t0
    return res


def _state(cmp: Comparison) -> dict:
    return {**cmp.totals, "missing": len(cmp.missing), "different": len(cmp.different),
            "extra": len(cmp.extra), "digests_recomputed": cmp.refreshed}
