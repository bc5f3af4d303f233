"""The ingest paths: Binance dump files and landing replays -> S3 landing -> the primary.

For each chunk of a file: validate (bad rows quarantined with line and reason), group by
5-minute bucket, merge each bucket into its landing object (Landing.merge_into: union, dedup on
trade id), then load ticks + registry + aggregate + offset in one transaction. The newest bucket
of a chunk is carried into the next chunk, so a bucket normally lands once, whole. A replay
loads landing objects (verified against their checksums) the same way, without landing them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psycopg
import pyarrow as pa

from workers.core import logs
from workers.core.errors import BadInput
from workers.core.pg import require_autocommit
from workers.db.load import BucketLoad, known_buckets, load
from workers.landing.store import (
    RAW,
    BucketWrite,
    Landing,
    bucket_of_key,
    bucket_stats,
    split_by_bucket,
)
from workers.sources.binance_files import BadFile, RawBatch, TradeFile, open_trade_file
from workers.sources.validate import UnitState, validate

log = logs.get("ingest")
S3_THREADS = 3


@dataclass
class Summary:
    source: str
    rows_read: int = 0
    accepted: int = 0
    inserted: int = 0
    duplicates: int = 0
    quarantined: Counter = field(default_factory=Counter)
    buckets_landed: int = 0
    buckets_unchanged: int = 0
    quarantine_uri: str | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.buckets_landed)

    def add(self, other: Summary) -> None:
        """Fold another file's summary into this one (several files, one stage)."""
        for name in ("rows_read", "accepted", "inserted", "duplicates", "buckets_landed",
                     "buckets_unchanged"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.quarantined.update(other.quarantined)
        self.seconds += other.seconds

    def summary(self) -> str:
        q = ", ".join(f"{k}: {v}" for k, v in sorted(self.quarantined.items())) or "none"
        return (f"{self.source}: read {self.rows_read:,}, accepted {self.accepted:,}, "
                f"inserted {self.inserted:,}, duplicates {self.duplicates:,}, quarantined "
                f"{sum(self.quarantined.values()):,} ({q}); buckets landed "
                f"{self.buckets_landed}, unchanged {self.buckets_unchanged}; "
                f"{self.seconds:.1f} s"
                + (f"\n  quarantine: {self.quarantine_uri}" if self.quarantine_uri else ""))

    def as_dict(self) -> dict:
        return {"source": self.source, "rows_read": self.rows_read, "accepted": self.accepted,
                "inserted": self.inserted, "duplicates": self.duplicates,
                "quarantined": sum(self.quarantined.values()),
                "quarantined_by_reason": dict(self.quarantined),
                "buckets_landed": self.buckets_landed,
                "buckets_unchanged": self.buckets_unchanged,
                "quarantine_uri": self.quarantine_uri, "seconds": round(self.seconds, 3)}


class Pipeline:
    """Lands and loads buckets of one symbol from a file."""

    def __init__(self, conn: psycopg.Connection, landing: Landing, symbol: str, source: str,
                 summary: Summary, replica=None):
        self.conn = require_autocommit(conn)
        self.replica = replica  # workers.replica.writer.ReplicaWriter: best effort, after commit
        self.landing = landing
        self.symbol = symbol
        self.source = source
        self.summary = summary
        self.quarantine: list[dict] = []
        self._lock = threading.Lock()  # buckets land on threads; counters are shared
        self._pool = ThreadPoolExecutor(S3_THREADS)
        # The database load of one flush overlaps the landing of the next; each flush is
        # still landed before it is loaded, and loads stay in order on one connection.
        self._db = ThreadPoolExecutor(1)
        self._loading: Future | None = None

    def flush(self, buckets: dict[int, list[tuple[pa.Table, np.ndarray]]],
              describe: Callable[[int], dict]) -> None:
        """Land, then load, the given buckets: {bucket µs: [(rows, their input positions)]}."""
        if not buckets:
            return
        keys = sorted(buckets)
        landed = list(self._pool.map(lambda b: self._land(b, buckets[b], describe), keys))
        self.wait()
        self._loading = self._db.submit(self._load, landed)

    def wait(self) -> None:
        if self._loading is not None:
            self._loading.result()  # re-raises a load error here, in the caller's thread
            self._loading = None
            # mimalloc keeps freed pages for reuse; between flushes nothing needs them.
            pa.default_memory_pool().release_unused()

    def _land(self, bucket: int, parts, describe) -> tuple[int, BucketWrite]:
        incoming = pa.concat_tables([t for t, _ in parts])
        positions = np.concatenate([p for _, p in parts])
        w = self.landing.merge_into(self.symbol, bucket, incoming)
        with self._lock:
            self.summary.duplicates += w.merge.duplicates
            for pos, reason in w.merge.conflicts:
                self.quarantine_row(describe(int(positions[pos])), reason)
            self.summary.buckets_landed += w.written
        return bucket, w

    def _load(self, landed: list[tuple[int, BucketWrite]]) -> None:
        known = known_buckets(self.conn, self.symbol, [b for b, _ in landed])
        loads = []
        for bucket, w in landed:
            if bucket in known and known[bucket] == w.sha256:
                with self._lock:
                    self.summary.buckets_unchanged += 1
                continue
            # An unregistered bucket holds no ticks (they commit with its registry row), so all
            # of its rows load. A registered one needs only what is new — unless its object had
            # changed since it was registered (a crash between landing and commit): then all of
            # it goes through ON CONFLICT to reconcile.
            m = w.merge
            rows = m.new_rows if bucket in known and known[bucket] == w.before else m.table
            loads.append(BucketLoad(self.symbol, bucket, rows, bucket in known,
                                    self.landing.uri(w.key), w.sha256, w.size,
                                    bucket_stats(m.table)))
        if loads:
            n = load(self.conn, loads, source=self.source)
            with self._lock:
                self.summary.inserted += n
            if self.replica is not None:  # committed on the primary: now the replica, never
                source = self.source      # waiting for it (see workers/replica/writer.py)
                self.replica.submit([(b.symbol, b.bucket_us) for b in loads],
                                    lambda c: load(c, loads, source=source), what=source)

    def quarantine_row(self, where: dict, reason: str) -> None:
        self.summary.quarantined[reason] += 1
        self.quarantine.append({**where, "reason": reason})

    def close(self, run_id: str) -> None:
        self._pool.shutdown()
        self._db.shutdown()
        if self.quarantine:
            self.summary.quarantine_uri = self.landing.write_quarantine(
                self.symbol, self.source, run_id, self.quarantine)


def ingest_file(conn: psycopg.Connection, landing: Landing, path: str, *,
                symbol: str | None = None, progress: Callable[[Summary], None] | None = None,
                run_id: str | None = None, block_bytes: int = 512 << 10,
                flush_rows: int = 65_536, replica=None) -> Summary:
    """Small parse blocks keep Arrow's CSV buffers small (they peak at ~20x the block); rows are
    flushed (landed, then loaded in one transaction) once `flush_rows` are ready."""
    t0 = time.monotonic()
    tf: TradeFile = open_trade_file(path, symbol)
    summary = Summary(source=str(path))
    pipe = Pipeline(conn, landing, tf.symbol, f"file:{tf.path.name}", summary, replica)
    units = UnitState()
    lay = tf.layout
    pending: dict[int, list[tuple[pa.Table, np.ndarray]]] = {}
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
            cols = {"trade_id": batch.column(lay.id_col), "price": batch.column("price"),
                    "quantity": batch.column(lay.qty_col), "time": batch.column(lay.time_col),
                    "is_buyer_maker": batch.column("is_buyer_maker")}
            if lay.quote_col:
                cols["quote_quantity"] = batch.column(lay.quote_col)
            table, pos, bad = validate(cols, units)
            for i, reason in bad:
                pipe.quarantine_row(_row_info(tf, rb, k0 + i), reason)
            summary.accepted += table.num_rows
            held[k0] = rb
            for bucket, (t, p) in split_by_bucket(table, pos + k0).items():
                pending.setdefault(bucket, []).append((t, p))
            # Keep the newest bucket open: the next chunk probably continues it.
            newest = max(pending) if pending else None
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
    summary.accepted -= sum(1 for q in pipe.quarantine
                            if q["reason"].startswith("conflicting duplicate"))
    summary.seconds = time.monotonic() - t0
    return summary


def _row_info(tf: TradeFile, rb: RawBatch, pos: int) -> dict:
    i = pos - rb.start
    batch = rb.columns
    text = ",".join(str(batch.column(c)[i].as_py()) for c in range(batch.num_columns))
    return {"file": tf.path.name, "line": tf.line_of(pos), "text": text[:500]}


def landing_keys(landing: Landing, prefix: str, *, since_us: int | None = None,
                 until_us: int | None = None) -> list[str]:
    """Bucket objects under `prefix` (raw/...) whose bucket lies in [since, until)."""
    keys = []
    for k in landing.keys(prefix):
        try:
            _, bucket = bucket_of_key(k)
        except ValueError as e:
            raise BadInput(f"{landing.uri(k)}: {e}") from None
        if (since_us is None or bucket >= since_us) and (until_us is None or bucket < until_us):
            keys.append(k)
    return keys


def replay(conn: psycopg.Connection, landing: Landing, keys: list[str], *, source: str,
           registry_is_current: bool = True, skip_unchanged: bool = False,
           progress: Callable[[Summary], None] | None = None) -> Summary:
    """Load landing objects into the database, 64 buckets per transaction (the one replay).

    `registry_is_current`: the database's registry vouches for its objects, so an object that
    differs from its registry checksum is corrupt (a plain replay). False after a point-in-time
    restore, whose registry may predate objects that changed since: then each object is checked
    against the checksum stored with it. `skip_unchanged`: objects the registry already holds at
    their checksum are not loaded again (otherwise they go through ON CONFLICT and add nothing).
    """
    require_autocommit(conn)
    t0 = time.monotonic()
    summary = Summary(source=f"s3://{landing.bucket}/" + (_common_prefix(keys) or RAW))
    by_symbol: dict[str, list[tuple[str, int]]] = {}
    for k in keys:
        symbol, bucket = bucket_of_key(k)
        by_symbol.setdefault(symbol, []).append((k, bucket))
    for symbol, items in by_symbol.items():
        for i in range(0, len(items), 64):
            chunk = items[i:i + 64]
            known = known_buckets(conn, symbol, [b for _, b in chunk])
            loads = []
            for key, bucket in chunk:
                obj = landing.read_verified(
                    key, known.get(bucket) if registry_is_current else None)
                summary.rows_read += obj.table.num_rows
                summary.accepted += obj.table.num_rows
                if skip_unchanged and known.get(bucket) == obj.sha256:
                    continue
                loads.append(BucketLoad(symbol, bucket, obj.table, bucket in known,
                                        landing.uri(key), obj.sha256, obj.size,
                                        bucket_stats(obj.table)))
            summary.inserted += load(conn, loads, source=f"{source}:{symbol}") if loads else 0
            summary.buckets_unchanged += len(loads)
            if progress:
                progress(summary)
    summary.seconds = time.monotonic() - t0
    return summary


def ingest_landing(conn: psycopg.Connection, landing: Landing, prefix: str, *,
                   since_us: int | None = None, until_us: int | None = None,
                   progress: Callable[[Summary], None] | None = None) -> Summary:
    """Replay landing objects under `prefix` (raw/<SYMBOL>/...) into the database; each is
    checked against the registry's checksum (or, unregistered, the one stored with it)."""
    keys = landing_keys(landing, prefix, since_us=since_us, until_us=until_us)
    s = replay(conn, landing, keys, source="landing", progress=progress)
    s.source = f"s3://{landing.bucket}/{prefix}"
    return s


def _common_prefix(keys: list[str]) -> str:
    if not keys:
        return ""
    a, b = min(keys), max(keys)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n].rsplit("/", 1)[0] + "/" if "/" in a[:n] else ""


def _run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
