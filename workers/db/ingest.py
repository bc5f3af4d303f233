"""The ingest paths: Binance dump files and landing replays -> S3 landing -> the primary.

For each chunk of a file: validate (bad rows quarantined with line and reason), group by
5-minute bucket, merge each bucket into its landing object (Landing.merge_into: union, dedup on
trade id), then load ticks + registry + aggregate + offset in one transaction. The newest bucket
of a chunk is carried into the next chunk, so a bucket normally lands once, whole. A replay
loads landing objects (verified against their checksums) the same way, without landing them.

Concurrency: every bucket is written under its lock (workers/db/bucket_locks.py), held from
before its landing object is read until its registry row has committed; after the commit the
object's ETag is checked against the one this writer stored, so the registry never describes an
object other than the one in landing. Two ingests, a stream compaction and a replay of the same
buckets may run at once: each bucket's object ends up the union of all of them.

A trade id is stored in one bucket only: a row whose id another bucket holds — of the database,
of this run, of this very flush — or that an earlier row places in another bucket is quarantined
as a conflicting duplicate (workers/db/trade_ids.py), under the ids' locks until the load
commits. Every row read is counted once in the summary (workers/db/summary.py). A bucket landed
in parts is merged a row group at a time (workers/landing/bounded.py): memory follows the part.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import psycopg
import pyarrow as pa

from workers.core import logs
from workers.core.errors import Failed
from workers.core.pg import require_autocommit, sibling
from workers.core.sqlfiles import query
from workers.core.ticks import iso, to_dt, to_us
from workers.db import file_loads, trade_ids
from workers.db.bucket_locks import Locks, SessionLocks, bucket_locks, combine, id_locks
from workers.db.load import BucketLoad, known_buckets, load
from workers.db.replay import ingest_landing, landing_keys, replay
from workers.db.summary import AddedIds, Summary
from workers.landing.rows import split_by_bucket
from workers.landing.store import (
    BucketWrite,
    Landing,
    object_key,
)
from workers.sources.binance_files import BadFile, Limits, RawBatch, TradeFile, open_trade_file
from workers.sources.validate import UnitState

__all__ = ["Summary", "ingest_file", "ingest_landing", "landing_keys", "replay"]
log = logs.get("ingest")
S3_THREADS = 3
LOADERS = 2  # flushes loading at once, each on its own connection
CONFLICT = "conflicting duplicate trade id (same id, different values)"


Pending = dict[int, list[tuple[pa.Table, np.ndarray]]]  # bucket µs -> [(rows, input positions)]


@dataclass(frozen=True)
class InFlight:
    """A flush handed to the database threads: its load (and check), locks and buckets."""

    future: Future
    locks: Locks  # its buckets' and its trade ids' (bucket_locks.id_locks)
    buckets: set[int]


@dataclass(frozen=True)
class Prepared:
    """What a landed bucket will load, worked out on a landing thread: valid while the
    registry still holds `registered` (its SHA-256 then; None: not registered)."""

    registered: str | None
    rows: pa.Table
    stats: dict


def _rows_to_load(landing: Landing, w: BucketWrite, registered: str | None) -> pa.Table:
    """An unregistered bucket holds no ticks (they commit with its registry row), so all of its
    rows load. A registered one needs only what is new — unless its object had changed since it
    was registered (a crash between landing and commit): then all of it goes through ON
    CONFLICT to reconcile (after a streamed merge, read back from landing: the one case where a
    dense bucket is held whole)."""
    if (registered is not None and registered == w.before) or w.before is None:
        return w.merge.new_rows  # (no object before: every row of it is new)
    if w.merge.table is not None:
        return w.merge.table
    return landing.read_verified(w.key, w.sha256).table


class Pipeline:
    """Lands and loads buckets of one market's symbol from a file."""

    def __init__(self, conn: psycopg.Connection, landing: Landing, market: str, symbol: str,
                 source: str, summary: Summary, replica=None, *, max_bucket_rows: int):
        self.conn = require_autocommit(conn)
        self.replica = replica  # workers.replica.writer.ReplicaWriter: best effort, after commit
        self.landing = landing
        self.market, self.symbol = market, symbol
        self.source = source
        self.summary = summary
        self.max_bucket_rows = max_bucket_rows
        self.quarantine: list[dict] = []
        self._lock = threading.Lock()  # buckets land on threads; counters are shared
        self._pool = ThreadPoolExecutor(S3_THREADS)
        # Database loads overlap the landing of the next flush, and up to LOADERS of them run
        # at once on connections of their own: the server's share of a load (one backend, one
        # core each) is the longest stage. Each flush is landed before it is loaded; flushes
        # in flight at once hold disjoint buckets (a flush that shares one waits for them).
        self._db = ThreadPoolExecutor(LOADERS)
        self._conns: queue.SimpleQueue[psycopg.Connection] = queue.SimpleQueue()
        self._opened: list[psycopg.Connection] = []
        self._conns.put(conn)
        self._in_flight: deque[InFlight] = deque()
        # Bucket locks and the lookups made under them, on a connection of their own (used by
        # this thread only; loads run on the database threads).
        self._lock_conn = sibling(conn)
        self.locks = SessionLocks(self._lock_conn)
        # Ticks of buckets the live stream has not registered yet: their ids are checked too.
        self._unregistered = trade_ids.unregistered(self._lock_conn, market, symbol)
        self._ranges: dict[int, tuple[int, int]] = {}  # trade ids of buckets landed this run
        self._added = AddedIds()  # the ids this run added to each bucket (for the summary)
        self.first_bucket: int | None = None  # the range of buckets this file landed
        self.last_bucket: int | None = None
        self._stored: dict[str, str | None] = {}  # key -> ETag of this run's newest write

    def flush(self, buckets: Pending, describe: Callable[[int], dict]) -> None:
        """Land, then load, the given buckets: {bucket µs: [(rows, their input positions)]}."""
        if not buckets:
            return
        keys = sorted(buckets)
        # The buckets' locks, and the trade ids': from the cross-bucket check until the load
        # commits, no other writer decides where these ids go (workers/db/trade_ids.py).
        locks = combine(bucket_locks([(self.market, self.symbol, b) for b in keys]), id_locks(
            self.market, self.symbol, np.concatenate([t.column("trade_id").to_numpy()
                                                      for b in keys for t, _ in buckets[b]])))
        # Holding the previous flush's locks, only try; otherwise let go of them first (its
        # load commits) and wait: no two writers ever wait for each other in a cycle.
        if not self.locks.try_acquire(locks):
            self.wait()
            self.locks.acquire(locks)
        merged = {b: (pa.concat_tables([t for t, _ in buckets[b]]),
                      np.concatenate([p for _, p in buckets[b]])) for b in keys}
        merged = self._drop_conflicts(merged, describe)
        keys = sorted(merged)  # a bucket whose every row was a conflict is gone
        if keys:
            self.first_bucket = min(keys[0], self.first_bucket or keys[0])
            self.last_bucket = max(keys[-1], self.last_bucket or keys[-1])
        moved = self._old_layout_keys(keys)
        # What the registry holds of these buckets decides which rows load; under their locks
        # only this run changes it, so ask now (unless a load in flight has one of them) and
        # work out rows and aggregates on the landing threads, off the database threads.
        if any(set(keys) & f.buckets for f in self._in_flight):
            self.wait()
        known = known_buckets(self._lock_conn, self.market, self.symbol, keys)
        landed = list(self._pool.map(
            lambda b: self._land(b, *merged[b], describe, moved.get(b), known.get(b)), keys))
        while len(self._in_flight) >= LOADERS:
            self._complete()
        if not self._opened and LOADERS > 1:
            self._opened.append(sibling(self.conn))
            self._conns.put(self._opened[-1])
        self._in_flight.append(InFlight(self._db.submit(self._load, landed), locks, set(keys)))

    def wait(self) -> None:
        """Every flush in flight committed, was checked and let go of its locks."""
        while self._in_flight:
            self._complete()

    def _complete(self) -> None:
        """The oldest flush in flight committed and was checked (_load): release its locks."""
        f = self._in_flight.popleft()
        f.future.result()  # re-raises a load or check error here, in the caller's thread
        self.locks.release(f.locks)
        # Between flushes nothing needs the memory the allocator keeps for reuse.
        pa.default_memory_pool().release_unused()

    def _land(self, bucket: int, incoming: pa.Table, positions: np.ndarray, describe,
              current_key: str | None, registered: str | None
              ) -> tuple[int, BucketWrite, Prepared]:
        # Bounded: a bucket object past one row group is merged a row group at a time, so a
        # dense bucket landed in parts costs memory for its incoming rows only.
        w = self.landing.merge_into(self.market, self.symbol, bucket, incoming,
                                    current_key=current_key, bounded=True)
        if w.row_count > self.max_bucket_rows:
            raise BadFile(self.source, f"bucket {iso(bucket)} would hold "
                                       f"{w.row_count:,} trades (limit "
                                       f"{self.max_bucket_rows:,}, TICKSTACK_INGEST_MAX_BUCKET_"
                                       "ROWS): not five minutes of a real market")
        with self._lock:
            # Each incoming row: new, a duplicate (of a trade stored before this input, or of
            # one this input stored, maybe in an earlier flush), or a conflict (quarantined).
            m = w.merge
            mine = self._added.count_in(bucket, m.existing_duplicate_ids)
            self.summary.inserted += m.new_rows.num_rows
            self.summary.already_stored += len(m.existing_duplicate_ids) - mine
            self.summary.input_duplicates += m.duplicates - len(m.existing_duplicate_ids) + mine
            self._added.add(bucket, m.new_rows.column("trade_id").to_numpy())
            for pos, reason in m.conflicts:
                self.quarantine_row(describe(int(positions[pos])), reason)
            self.summary.buckets_landed += w.written
            if w.written:
                self._stored[w.key] = w.etag
        if w.merge.table is not None:  # sorted by trade id
            ids = w.merge.table.column("trade_id")
            self._ranges[bucket] = (ids[0].as_py(), ids[-1].as_py())
        else:
            self._ranges[bucket] = (w.stats["first_trade_id"], w.stats["last_trade_id"])
        prepared = None
        if not (registered == w.sha256 and w.moved_from is None):
            prepared = Prepared(registered, _rows_to_load(self.landing, w, registered),
                                w.bucket_stats())
        return bucket, w, prepared

    def _load(self, landed: list[tuple[int, BucketWrite, Prepared | None]]) -> None:
        conn = self._conns.get()
        try:
            self._load_on(conn, landed)
        finally:
            self._conns.put(conn)
        # Committed: check, still under the flush's bucket locks (_complete releases them
        # after this), that landing holds what was registered. Here, not in _complete: the
        # listing's round trip (20-28 ms on the local S3, growing with the bucket) then
        # overlaps the parsing of the next flush instead of stalling it, ~35 times a day.
        self._verify([w for _, w, _ in landed])

    def _load_on(self, conn: psycopg.Connection,
                 landed: list[tuple[int, BucketWrite, Prepared | None]]) -> None:
        known = known_buckets(conn, self.market, self.symbol, [b for b, _, _ in landed])
        loads = []
        for bucket, w, prep in landed:
            if bucket in known and known[bucket] == w.sha256 and w.moved_from is None:
                with self._lock:
                    self.summary.buckets_unchanged += 1
                continue
            if prep is not None and prep.registered == known.get(bucket):
                rows, stats = prep.rows, prep.stats
            else:  # the registry is not what it was when the rows were chosen: choose again
                rows = _rows_to_load(self.landing, w, known.get(bucket))
                stats = prep.stats if prep is not None else w.bucket_stats()
            loads.append(BucketLoad(self.market, self.symbol, bucket, rows, bucket in known,
                                    self.landing.uri(w.key), w.sha256, w.size, stats, w.etag))
        if loads:
            n = load(conn, loads, source=self.source)
            with self._lock:
                self.summary.ticks_inserted += n
            if self.replica is not None:  # committed on the primary: now the replica, never
                source = self.source      # waiting for it (see workers/replica/writer.py)
                self.replica.submit([(b.market, b.symbol, b.bucket_us) for b in loads],
                                    lambda c: load(c, loads, source=source), what=source)

    def _verify(self, writes: list[BucketWrite]) -> None:
        """Registered and committed: the objects must still be the ones this writer stored
        (still under the bucket locks). Old-layout objects that were moved go now."""
        written = [w for w in writes if w.written and w.etag]
        for prefix in sorted({w.key.rsplit("/", 1)[0] + "/" for w in written}):
            mine = sorted(w.key for w in written if w.key.startswith(prefix))
            now = self.landing.etags(prefix, mine[0], mine[-1])
            for w in written:  # a later flush of this run may have rewritten it since
                if w.key.startswith(prefix) and now.get(w.key) != self._stored.get(w.key):
                    raise Failed(f"{self.landing.uri(w.key)} changed after this ingest stored "
                                 "and registered it (a writer outside tickstack's bucket "
                                 "locks?): run the ingest again to reconcile")
        old = [w.moved_from for w in writes if w.moved_from]
        if old:
            self.landing.delete(old)

    def _old_layout_keys(self, buckets: list[int]) -> dict[int, str]:
        """Registered objects of these buckets under the layout before markets (spot only)."""
        if self.market != "spot":
            return {}
        rows = self._lock_conn.execute(query(__package__, "registered_keys"), [
            self.market, self.symbol, [to_dt(b) for b in buckets]]).fetchall()
        out = {}
        for bucket, uri in rows:
            key = self.landing.key_of(uri)
            if key != object_key(self.market, self.symbol, to_us(bucket)):
                out[to_us(bucket)] = key
        return out

    def _drop_conflicts(self, merged: dict[int, tuple[pa.Table, np.ndarray]],
                        describe) -> dict[int, tuple[pa.Table, np.ndarray]]:
        """Quarantine incoming rows that would store a trade id in a second bucket: one that
        another bucket holds (of the database, of this run, of this very flush), or that an
        earlier row of this flush places in another bucket (workers/db/trade_ids.py)."""
        if not merged:
            return merged
        keys = sorted(merged)
        ids = np.concatenate([merged[b][0].column("trade_id").to_numpy() for b in keys])
        pos = np.concatenate([merged[b][1] for b in keys])
        owner = np.concatenate([np.full(merged[b][0].num_rows, b, dtype=np.int64)
                                for b in keys])
        lo, hi = int(ids.min()), int(ids.max())
        # Loads of this run in flight whose buckets may hold these ids: let them commit first.
        if self._in_flight and any(r[1] >= lo and r[0] <= hi for r in self._ranges.values()):
            self.wait()
        bad = trade_ids.conflicting(self._lock_conn, self.market, self.symbol, ids, pos,
                                    owner, self._unregistered)
        if not bad.any():
            return merged
        out = {}
        start = 0
        for b in keys:
            t, p = merged[b]
            keep = ~bad[start:start + t.num_rows]
            for i in np.flatnonzero(~keep):
                self.quarantine_row(describe(int(p[i])), CONFLICT)
            start += t.num_rows
            if keep.any():
                out[b] = (t.filter(pa.array(keep)), p[keep])
        return out

    def quarantine_row(self, where: dict, reason: str) -> None:
        self.summary.quarantined[reason] += 1
        self.quarantine.append({**where, "reason": reason})

    def close(self, run_id: str) -> None:
        try:
            self._pool.shutdown()
            self._db.shutdown()
            for c in self._opened:
                c.close()
            if self.quarantine:
                self.summary.quarantine_uri = self.landing.write_quarantine(
                    self.market, self.symbol, self.source, run_id, self.quarantine)
        finally:
            self.locks.release_all()
            self._lock_conn.close()


def ingest_file(conn: psycopg.Connection, landing: Landing, path: str, *,
                symbol: str | None = None, market: str | None = None,
                progress: Callable[[Summary], None] | None = None,
                run_id: str | None = None, block_bytes: int = 512 << 10,
                flush_rows: int = 32_768, replica=None, limits: Limits = Limits(),
                max_bucket_rows: int = 5_000_000, force: bool = False,
                opened: TradeFile | None = None, started: float | None = None) -> Summary:
    """Small parse blocks keep Arrow's CSV buffers small (they peak at ~20x the block); rows are
    flushed (landed, then loaded in one transaction) once `flush_rows` are ready; a bucket
    holding more than four flushes' worth is flushed in parts, so memory stays bounded.

    A file whose load completed before and whose buckets' registry rows are unchanged since is
    skipped without reading it or landing (workers/db/file_loads.py); `force` loads it anyway.
    `opened`: the file already opened (and checked for a skip) by the caller, since `started`.
    """
    t0 = time.monotonic() if started is None else started
    tf: TradeFile = opened or open_trade_file(path, symbol, market, limits)
    done = None if force else file_loads.skipped(conn, landing, tf, str(path), t0)
    if done is not None:
        return done
    summary = Summary(source=str(path))
    pipe = Pipeline(conn, landing, tf.market, tf.symbol, f"file:{tf.path.name}", summary,
                    replica, max_bucket_rows=max_bucket_rows)
    units = UnitState()
    pending: Pending = {}
    held: dict[int, RawBatch] = {}  # text of batches with rows still pending (for quarantine)

    def describe(pos: int) -> dict:
        """File, line and text of the pos-th row read (its batch is kept while it is pending)."""
        for rb in held.values():
            if rb.start <= pos < rb.start + rb.columns.num_rows:
                return _row_info(tf, rb, pos)
        raise LookupError(f"row {pos} is no longer held")

    try:
        for rb in tf.batches(block_bytes):
            batch, k0 = rb.columns, rb.start
            summary.rows_read += batch.num_rows + len(rb.invalid)
            for bad_line in rb.invalid:
                pipe.quarantine_row({"line": bad_line.line, "text": bad_line.text},
                                    bad_line.reason)
            if not batch.num_rows:
                continue
            table, pos, bad = tf.validate(batch, units, flagged={
                i: "invalid UTF-8 bytes" for i in rb.bad_utf8})
            for i, reason in bad:
                info = _row_info(tf, rb, k0 + i)
                if i in rb.bad_utf8:
                    info["text"] = rb.bad_utf8[i]
                pipe.quarantine_row(info, reason)
            summary.accepted += table.num_rows
            held[k0] = rb
            for bucket, (t, p) in split_by_bucket(table, pos + k0).items():
                pending.setdefault(bucket, []).append((t, p))
            # Keep the newest bucket open (the next chunk probably continues it) unless it has
            # grown past any real market's five minutes.
            newest = max(pending) if pending else None
            if newest is not None and sum(t.num_rows for t, _ in pending[newest]) > 4 * flush_rows:
                newest = None
            ready = {b: v for b, v in pending.items() if b != newest}
            # The first flush is small so the database starts working early.
            threshold = flush_rows if summary.buckets_landed else min(flush_rows, 16_384)
            if sum(t.num_rows for v in ready.values() for t, _ in v) < threshold:
                if progress:
                    progress(summary)
                continue
            pipe.flush(ready, describe)
            for b in ready:
                del pending[b]
            keep_from = min((int(p.min()) for v in pending.values() for _, p in v), default=k0)
            for start in [s for s, b in held.items()
                          if s + b.columns.num_rows <= keep_from]:
                del held[start]
            if progress:
                progress(summary)
        pipe.flush(pending, describe)
        pipe.wait()
        if summary.rows_read == 0:
            raise BadFile(path, "no rows")
    finally:
        pipe.close(run_id or _run_id())
    summary.accepted -= sum(1 for q in pipe.quarantine if q["reason"] == CONFLICT)
    summary.check_accounts()
    if pipe.first_bucket is not None:  # every flush committed: the file is loaded
        file_loads.record(conn, tf.market, tf.symbol, tf.sha256, tf.path.name,
                          pipe.first_bucket, pipe.last_bucket, rows_read=summary.rows_read,
                          accepted=summary.accepted,
                          quarantined=sum(summary.quarantined.values()),
                          quarantine_uri=summary.quarantine_uri)
    summary.seconds = time.monotonic() - t0
    return summary


def _row_info(tf: TradeFile, rb: RawBatch, pos: int) -> dict:
    i = pos - rb.start
    batch = rb.columns
    text = ",".join(str(batch.column(c)[i].as_py()) for c in range(batch.num_columns))
    return {"file": tf.path.name, "line": tf.line_of(pos), "text": text[:500]}


def _run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
