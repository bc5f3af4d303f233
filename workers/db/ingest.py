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

This module reads a file and decides its flushes; workers/db/flush.py lands and loads them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import psycopg

from workers.core import logs
from workers.db import file_loads
from workers.db.flush import CONFLICT, Pending, Pipeline
from workers.db.replay import ingest_landing, landing_keys, replay
from workers.db.summary import Summary
from workers.landing.rows import split_by_bucket
from workers.landing.store import Landing
from workers.sources.binance_files import BadFile, Limits, RawBatch, TradeFile, open_trade_file
from workers.sources.validate import UnitState

__all__ = ["Summary", "ingest_file", "ingest_landing", "landing_keys", "replay"]
log = logs.get("ingest")


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
    read = _FileRead(tf, pipe, summary)
    try:
        for rb in tf.batches(block_bytes):
            if not read.take(rb):
                continue
            read.flush_ready(flush_rows, rb.start)
            if progress:
                progress(summary)
        pipe.flush(read.pending, read.describe)
        pipe.wait()
        if summary.rows_read == 0:
            raise BadFile(path, "no rows")
    finally:
        pipe.close(run_id or _run_id())
    _record(conn, tf, pipe, summary)
    summary.seconds = time.monotonic() - t0
    return summary


class _FileRead:
    """The rows of one file between its parse and its flushes: pending buckets, and the text
    of the batches they came from (kept while a row of theirs may still be quarantined)."""

    def __init__(self, tf: TradeFile, pipe: Pipeline, summary: Summary):
        self.tf, self.pipe, self.summary = tf, pipe, summary
        self.units = UnitState()
        self.pending: Pending = {}
        self.held: dict[int, RawBatch] = {}  # batch start -> batch, while rows are pending

    def describe(self, pos: int) -> dict:
        """File, line and text of the pos-th row read (its batch is kept while it is pending)."""
        for rb in self.held.values():
            if rb.start <= pos < rb.start + rb.columns.num_rows:
                return _row_info(self.tf, rb, pos)
        raise LookupError(f"row {pos} is no longer held")

    def take(self, rb: RawBatch) -> bool:
        """Count, validate and quarantine a parsed batch; its valid rows join their pending
        buckets. False when it held no parsed row."""
        batch, k0 = rb.columns, rb.start
        self.summary.rows_read += batch.num_rows + len(rb.invalid)
        for bad_line in rb.invalid:
            self.pipe.quarantine_row({"line": bad_line.line, "text": bad_line.text},
                                     bad_line.reason)
        if not batch.num_rows:
            return False
        table, pos, bad = self.tf.validate(batch, self.units, flagged={
            i: "invalid UTF-8 bytes" for i in rb.bad_utf8})
        for i, reason in bad:
            info = _row_info(self.tf, rb, k0 + i)
            if i in rb.bad_utf8:
                info["text"] = rb.bad_utf8[i]
            self.pipe.quarantine_row(info, reason)
        self.summary.accepted += table.num_rows
        self.held[k0] = rb
        for bucket, (t, p) in split_by_bucket(table, pos + k0).items():
            self.pending.setdefault(bucket, []).append((t, p))
        return True

    def flush_ready(self, flush_rows: int, k0: int) -> None:
        """Flush the buckets that are ready once enough rows are: every pending bucket but the
        newest (the next chunk probably continues it) unless that one has grown past any real
        market's five minutes. Batches with no row pending any more are let go."""
        pending = self.pending
        newest = max(pending) if pending else None
        if newest is not None and sum(t.num_rows for t, _ in pending[newest]) > 4 * flush_rows:
            newest = None
        ready = {b: v for b, v in pending.items() if b != newest}
        # The first flush is small so the database starts working early.
        threshold = flush_rows if self.summary.buckets_landed else min(flush_rows, 16_384)
        if sum(t.num_rows for v in ready.values() for t, _ in v) < threshold:
            return
        self.pipe.flush(ready, self.describe)
        for b in ready:
            del pending[b]
        keep_from = min((int(p.min()) for v in pending.values() for _, p in v), default=k0)
        for start in [s for s, b in self.held.items() if s + b.columns.num_rows <= keep_from]:
            del self.held[start]


def _record(conn: psycopg.Connection, tf: TradeFile, pipe: Pipeline, summary: Summary) -> None:
    """The file's accounts closed and, when every flush committed, its load recorded."""
    summary.accepted -= sum(1 for q in pipe.quarantine if q["reason"] == CONFLICT)
    summary.check_accounts()
    if pipe.first_bucket is not None:  # every flush committed: the file is loaded
        file_loads.record(conn, tf.market, tf.symbol, tf.sha256, tf.path.name,
                          pipe.first_bucket, pipe.last_bucket, rows_read=summary.rows_read,
                          accepted=summary.accepted,
                          quarantined=sum(summary.quarantined.values()),
                          quarantine_uri=summary.quarantine_uri)


def _row_info(tf: TradeFile, rb: RawBatch, pos: int) -> dict:
    i = pos - rb.start
    batch = rb.columns
    text = ",".join(str(batch.column(c)[i].as_py()) for c in range(batch.num_columns))
    return {"file": tf.path.name, "line": tf.line_of(pos), "text": text[:500]}


def _run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
