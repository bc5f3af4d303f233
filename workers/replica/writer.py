"""Best-effort dual-write to the replica: the secondary never blocks or fails the primary path.

After a batch commits on the primary, the same write is handed to `ReplicaWriter.submit`, which
returns at once: one background thread applies writes in order on its own replica connection.

* Every write has a deadline (`replica_timeout_seconds`, connect included): the connection is
  opened with `connect_timeout` and a `statement_timeout`, and a watchdog shuts the socket down
  when a write overruns (a replica that accepts connections and never answers would otherwise
  hold the thread forever — no server-side timeout fires on a hung server).
* A failed, timed-out or skipped write is logged, counted (`tickstack_replica_failures`) and
  recorded as lag: the buckets it touched go into `ingestion.replica_lag` on the PRIMARY, in their
  own transaction. `workers replicate` later catches those buckets up from landing.
* Circuit breaker: after `replica_breaker_failures` consecutive failures no attempts are made for
  `replica_breaker_cooldown_seconds` (writes are recorded as lag straight away); then one trial
  write (half-open) closes it again or re-opens it.
* Writes queue behind a slow one up to `replica_queue`; beyond that they are recorded as lag.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from workers.core import logs
from workers.core.health import Metrics
from workers.core.markets import BucketId
from workers.core.settings import default
from workers.core.sqlfiles import query, template
from workers.core.ticks import to_dt

log = logs.get("replica")

Bucket = BucketId  # (market, symbol, bucket start in µs)


@dataclass
class _Job:
    buckets: list[Bucket]
    fn: Callable[[psycopg.Connection], object]
    what: str


def delivery_bound(timeout: float, queue_max: int) -> float:
    """How long after its primary commit a dual-write has reached the replica or been recorded
    as lag, at the latest: every write queued ahead of it (up to `queue_max`) and itself each
    take at most its deadline, `timeout` from its start — or the connect timeout, max(2,
    ⌈timeout⌉), when connecting overran it (the watchdog cuts a connection, not a connect)."""
    return (queue_max + 1) * max(2, math.ceil(timeout)) + 1.0


class ReplicaWriter:
    def __init__(self, dsn: str, lag_dsn: str, *,
                 timeout: float = default("replica_timeout_seconds"),
                 failures_to_open: int = default("replica_breaker_failures"),
                 cooldown: float = default("replica_breaker_cooldown_seconds"),
                 queue_max: int = default("replica_queue"), metrics: Metrics | None = None):
        self.dsn = dsn
        self.lag_dsn = lag_dsn
        self.timeout = timeout
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self.metrics = metrics or Metrics()
        self.stats: Counter = Counter()
        self._q: queue.Queue[_Job | None] = queue.Queue(queue_max)
        self._conn: psycopg.Connection | None = None
        self._failures = 0
        self._open_until: float | None = None
        self._deadline: float | None = None
        self._aborted = False
        self._state = threading.Lock()
        self._lag_lock = threading.Lock()
        self._lag_conn: psycopg.Connection | None = None
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="replica-writer", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="replica-watchdog",
                                          daemon=True)
        self._worker.start()
        self._watchdog.start()

    # --- the primary path's side: never waits on the replica ------------------------------

    @property
    def breaker_open(self) -> bool:
        return self._open_until is not None

    def submit(self, buckets: list[Bucket], fn: Callable[[psycopg.Connection], object],
               what: str = "batch") -> None:
        """Hand over one write (`fn(replica_conn)`, its own transaction) for these buckets."""
        if self._open_until is not None and time.monotonic() < self._open_until:
            self._failed(buckets, "breaker_open", "circuit breaker open")
            return
        try:
            self._q.put_nowait(_Job(sorted(set(buckets)), fn, what))
        except queue.Full:
            self._failed(buckets, "queue_full", "replica writes are backed up")

    def drain(self, wait: float | None = None) -> bool:
        """Wait (bounded) until queued writes are done; True when nothing is left."""
        end = time.monotonic() + (wait if wait is not None else 2 * self.timeout + 1)
        while time.monotonic() < end:
            if self._q.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return self._q.unfinished_tasks == 0

    def close(self, wait: float | None = None) -> None:
        """Finish what is queued within the deadline; whatever is left is recorded as lag."""
        self.drain(wait)
        self._stop.set()
        left: list[_Job] = []
        while True:
            try:
                j = self._q.get_nowait()
            except queue.Empty:
                break
            if j is not None:
                left.append(j)
            self._q.task_done()
        for j in left:
            self._failed(j.buckets, "shutdown", "not written before shutdown")
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._worker.join(0.5)
        for c in (self._conn, self._lag_conn):
            if c is not None and self._q.unfinished_tasks == 0:
                with contextlib.suppress(Exception):
                    c.close()

    # --- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._q.get()
            try:
                if job is None:
                    return
                if self._open_until is not None and time.monotonic() < self._open_until:
                    self._failed(job.buckets, "breaker_open", "circuit breaker open")
                    continue
                self._attempt(job)
            finally:
                self._q.task_done()

    def _attempt(self, job: _Job) -> None:
        with self._state:
            self._aborted = False
            self._deadline = time.monotonic() + self.timeout
        try:
            if self._conn is None or self._conn.closed:
                self._conn = None
                conn = psycopg.connect(self.dsn, autocommit=True,
                                       connect_timeout=max(2, math.ceil(self.timeout)))
                ms = sql.Literal(int(self.timeout * 1000))
                conn.execute(template(__package__, "set_statement_timeout").format(ms))
                conn.execute(template(__package__, "set_lock_timeout").format(ms))
                self._conn = conn
            job.fn(self._conn)
        except Exception as e:
            timed_out = self._aborted or isinstance(
                e, (psycopg.errors.ConnectionTimeout, psycopg.errors.QueryCanceled))
            self._drop_conn()
            with self._state:
                self._deadline = None
                self._failures += 1
                opened = self._failures >= self.failures_to_open
                if opened:
                    self._open_until = time.monotonic() + self.cooldown
            self._failed(job.buckets, "timeout" if timed_out else "error",
                         f"{'timeout after ' + str(self.timeout) + ' s: ' if timed_out else ''}"
                         f"{type(e).__name__}: {e}".strip()[:900])
            if opened:
                self.metrics.replica_breaker_open.set(1)
                log.warning("replica breaker open", failures=self._failures,
                            cooldown_s=self.cooldown)
            return
        with self._state:
            self._deadline = None
            was_open = self._open_until is not None
            self._failures = 0
            self._open_until = None
        self.stats["written"] += 1
        self.metrics.replica_writes.inc()
        if was_open:
            self.metrics.replica_breaker_open.set(0)
            log.info("replica breaker closed: a trial write succeeded")

    def _drop_conn(self) -> None:
        c, self._conn = self._conn, None
        if c is not None:
            with contextlib.suppress(Exception):
                c.close()

    def _watch(self) -> None:
        """Shut the socket of a write that overran its deadline: the writer thread wakes up
        with an error instead of waiting on a server that never answers."""
        while not self._stop.wait(0.05):
            with self._state:
                late = self._deadline is not None and time.monotonic() > self._deadline
                conn = self._conn
                if late and conn is not None and not self._aborted:
                    self._aborted = True
                else:
                    continue
            try:
                fd = conn.pgconn.socket
                s = socket.socket(fileno=os.dup(fd))
                try:
                    s.shutdown(socket.SHUT_RDWR)
                finally:
                    s.close()
            except Exception as e:  # already closed: the writer has its error anyway
                log.debug("replica watchdog", error=str(e))

    # --- lag --------------------------------------------------------------------------------

    def _failed(self, buckets: list[Bucket], reason: str, detail: str) -> None:
        self.stats[reason] += 1
        self.metrics.replica_failures.labels(reason).inc()
        if reason not in ("breaker_open",) or self.stats[reason] == 1:
            log.warning("replica write not done; recorded as lag", reason=reason,
                        detail=detail[:300], buckets=len(buckets))
        if buckets:
            self.record_lag(buckets, f"{reason}: {detail}"[:1000])

    def record_lag(self, buckets: list[Bucket], error: str) -> None:
        uniq = sorted(set(buckets))
        markets = [m for m, _, _ in uniq]
        symbols = [s for _, s, _ in uniq]
        times = [to_dt(b) for _, _, b in uniq]
        with self._lag_lock:
            try:
                if self._lag_conn is None or self._lag_conn.closed:
                    self._lag_conn = psycopg.connect(self.lag_dsn, autocommit=True,
                                                     connect_timeout=10)
                self._lag_conn.execute(query(__package__, "record_lag"),
                                       [error, markets, symbols, times])
            except psycopg.Error as e:  # the primary itself is failing: ingest will say so
                log.error("could not record replica lag", error=str(e), buckets=len(buckets))
                self._lag_conn = None
