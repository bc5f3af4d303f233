"""`workers ingest`: Binance dump files or landing objects -> S3 landing -> the primary.

For each chunk of a file: validate (bad rows quarantined with line and reason), group by
5-minute bucket, merge each bucket with its landing object (union, dedup on trade id), write the
objects, then load ticks + registry + aggregate + offset in one transaction. The newest bucket of a
chunk is carried into the next chunk, so a bucket normally lands once, whole.
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
from workers.db.load import BucketLoad, known_buckets, load
from workers.landing.store import (
    Landing,
    bucket_of_key,
    bucket_stats,
    merge,
    object_key,
    split_by_bucket,
)
from workers.sources.binance_files import BadFile, Skipped, TradeFile, open_trade_file
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

    def as_dict(self) -> dict:
        return {"source": self.source, "rows_read": self.rows_read, "accepted": self.accepted,
                "inserted": self.inserted, "duplicates": self.duplicates,
                "quarantined": sum(self.quarantined.values()),
                "quarantined_by_reason": dict(self.quarantined),
                "buckets_landed": self.buckets_landed,
                "buckets_unchanged": self.buckets_unchanged,
                "quarantine_uri": self.quarantine_uri, "seconds": round(self.seconds, 3)}


class Pipeline:
    """Lands and loads buckets for one symbol; shared by files, landing replay and the stream."""

    def __init__(self, conn: psycopg.Connection, landing: Landing, symbol: str, source: str,
                 summary: Summary, replica=None):
        self.conn = _autocommit(conn)
        self.replica = replica  # workers.replica.ReplicaWriter: best effort, after each commit
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

    def _land(self, bucket: int, parts, describe) -> tuple:
        incoming = pa.concat_tables([t for t, _ in parts])
        positions = np.concatenate([p for _, p in parts])
        key = object_key(self.symbol, bucket)
        existing, digest, size = None, None, None
        if self.landing.exists(key):
            existing, digest, _ = self.landing.read(key)
        before = digest
        m = merge(existing, incoming)
        with self._lock:
            self.summary.duplicates += m.duplicates
            for pos, reason in m.conflicts:
                self.quarantine_row(describe(int(positions[pos])), reason)
        if existing is None or m.new_rows.num_rows:
            digest, size = self.landing.write(key, m.table, self.symbol)
            with self._lock:
                self.summary.buckets_landed += 1
        else:
            size = self.landing.size(key)
        return bucket, key, m, before, digest, size

    def _load(self, landed: list[tuple]) -> None:
        known = known_buckets(self.conn, self.symbol, [b for b, *_ in landed])
        loads = []
        for bucket, key, m, before, digest, size in landed:
            if bucket in known and known[bucket] == digest:
                with self._lock:
                    self.summary.buckets_unchanged += 1
                continue
            # An unregistered bucket holds no ticks (they commit with its registry row), so all
            # of its rows load. A registered one needs only what is new — unless its object had
            # changed since it was registered (a crash between landing and commit): then all of
            # it goes through ON CONFLICT to reconcile.
            rows = m.new_rows if bucket in known and known[bucket] == before else m.table
            loads.append(BucketLoad(self.symbol, bucket, rows, bucket in known,
                                    self.landing.uri(key), digest, size, bucket_stats(m.table)))
        if loads:
            n = load(self.conn, loads, source=self.source)
            with self._lock:
                self.summary.inserted += n
            if self.replica is not None:  # committed on the primary: now the replica, never
                source = self.source      # waiting for it (see workers/replica.py)
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


def _autocommit(conn: psycopg.Connection) -> psycopg.Connection:
    """Each load is one explicit transaction; outside them nothing may hold one open (a query
    outside would turn the next transaction into a savepoint that commits only at the end)."""
    if not conn.autocommit:
        conn.commit()
        conn.autocommit = True
    return conn


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
    skipped = Skipped()
    units = UnitState()
    lay = tf.layout
    pending: dict[int, list[tuple[pa.Table, np.ndarray]]] = {}
    batch_text: dict[int, pa.RecordBatch] = {}

    def describe(pos: int) -> dict:
        """File, line and text of the pos-th row read (its batch is kept while it is pending)."""
        for start, b in batch_text.items():
            if start <= pos < start + b.num_rows:
                return _row_info(tf, skipped, b, start, pos)
        raise LookupError(f"row {pos} is no longer held")

    n_skipped_seen = 0
    try:
        for batch, k0 in tf.batches(skipped, block_bytes):
            summary.rows_read += batch.num_rows
            cols = {"trade_id": batch.column(lay.id_col), "price": batch.column("price"),
                    "quantity": batch.column(lay.qty_col), "time": batch.column(lay.time_col),
                    "is_buyer_maker": batch.column("is_buyer_maker")}
            if lay.quote_col:
                cols["quote_quantity"] = batch.column(lay.quote_col)
            table, pos, bad = validate(cols, units)
            for i, reason in bad:
                pipe.quarantine_row(_row_info(tf, skipped, batch, k0, k0 + i), reason)
            for line, reason, text in skipped.rows[n_skipped_seen:]:
                summary.rows_read += 1
                pipe.quarantine_row({"line": line, "text": text}, reason)
            n_skipped_seen = len(skipped.rows)
            summary.accepted += table.num_rows
            batch_text[k0] = batch
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
            for start in [s for s, b in batch_text.items() if s + b.num_rows <= keep_from]:
                del batch_text[start]
            if progress:
                progress(summary)
        for line, reason, text in skipped.rows[n_skipped_seen:]:
            summary.rows_read += 1
            pipe.quarantine_row({"line": line, "text": text}, reason)
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


def _row_info(tf: TradeFile, skipped: Skipped, batch: pa.RecordBatch, k0: int, pos: int) -> dict:
    i = pos - k0
    text = ",".join(str(batch.column(c)[i].as_py()) for c in range(batch.num_columns))
    return {"file": tf.path.name, "line": tf.line_of(pos, skipped), "text": text[:500]}


def ingest_landing(conn: psycopg.Connection, landing: Landing, prefix: str, *,
                   since_us: int | None = None, until_us: int | None = None,
                   progress: Callable[[Summary], None] | None = None) -> Summary:
    """Replay landing objects under `prefix` (raw/<SYMBOL>/...) into the database.

    Each object's SHA-256 is checked against the registry (or, on an empty database, against the
    checksum stored with the object) before use; a mismatch fails the replay.
    """
    t0 = time.monotonic()
    conn = _autocommit(conn)
    summary = Summary(source=f"s3://{landing.bucket}/{prefix}")
    keys = []
    for page in landing.s3.get_paginator("list_objects_v2").paginate(
            Bucket=landing.bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".parquet")]
    by_symbol: dict[str, list[tuple[str, int]]] = {}
    for k in sorted(keys):
        try:
            symbol, bucket = bucket_of_key(k)
        except ValueError as e:
            raise BadFile(k, "not a landing object key (raw/<SYMBOL>/<date>/<HHMM>.parquet)") \
                from e
        if (since_us is None or bucket >= since_us) and (until_us is None or bucket < until_us):
            by_symbol.setdefault(symbol, []).append((k, bucket))
    for symbol, items in by_symbol.items():
        for i in range(0, len(items), 64):
            chunk = items[i:i + 64]
            known = known_buckets(conn, symbol, [b for _, b in chunk])
            loads = []
            for key, bucket in chunk:
                table, digest, meta = landing.read(key)
                expected = known.get(bucket) or meta.get("sha256")
                if expected != digest:
                    raise BadFile(landing.uri(key), f"SHA-256 mismatch: expected {expected}, "
                                                    f"object is {digest}")
                summary.rows_read += table.num_rows
                summary.accepted += table.num_rows
                loads.append(BucketLoad(symbol, bucket, table, bucket in known, landing.uri(key),
                                        digest, landing.size(key), bucket_stats(table)))
            summary.inserted += load(conn, loads, source=f"landing:{symbol}")
            summary.buckets_unchanged += len(loads)
            if progress:
                progress(summary)
    summary.seconds = time.monotonic() - t0
    return summary


def replay_objects(conn: psycopg.Connection, landing: Landing, keys: list[str],
                   registry: dict[tuple[str, int], str]) -> tuple[int, int]:
    """Load landing objects a restored database lacks: (objects loaded, rows inserted).

    The registry here may be older than landing (a point-in-time restore), so each object is
    verified against the checksum stored with it; objects the registry already holds at that
    checksum are skipped. Loads go through ON CONFLICT where the bucket is known.
    """
    conn = _autocommit(conn)
    objects = rows = 0
    for i in range(0, len(keys), 64):
        loads = []
        for key in keys[i:i + 64]:
            symbol, bucket = bucket_of_key(key)
            table, digest, meta = landing.read(key)
            if meta.get("sha256") != digest:
                raise BadFile(landing.uri(key), f"SHA-256 mismatch: stored {meta.get('sha256')},"
                                                f" object is {digest}")
            if registry.get((symbol, bucket)) == digest:
                continue
            loads.append(BucketLoad(symbol, bucket, table, (symbol, bucket) in registry,
                                    landing.uri(key), digest, landing.size(key),
                                    bucket_stats(table)))
        for sym in sorted({b.symbol for b in loads}):
            rows += load(conn, [b for b in loads if b.symbol == sym], source=f"restore:{sym}")
        objects += len(loads)
    return objects, rows


def _run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]

