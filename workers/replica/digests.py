"""Per-bucket digests of the ticks, kept on both servers (market_data.tick_digests, sql/017):
what lets `workers replicate` compare a month in O(days) and recompute only what changed.

Every tickstack writer of ticks marks the buckets it writes stale in the same transaction
(workers/db/load.py); `refresh` recomputes stale digests from the ticks themselves (count and
the XOR of a 64-bit hash of every tick's values), so a digest always describes what the table
holds, not what a writer meant to write. A change to the ticks that no writer marked (a manual
statement on either server) trips a statement trigger, and the next refresh recomputes every
bucket. `days` digests each day's bucket digests; `buckets` lists them for the days that differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime

import psycopg

from workers.core import logs
from workers.core.markets import BucketId
from workers.core.pg import set_local_utc
from workers.core.sqlfiles import query
from workers.core.ticks import to_us

log = logs.get("replicate")
BATCH = 256  # stale buckets recomputed per statement

Key = BucketId
DayKey = tuple[str, str, date]  # (market, symbol, UTC day)


@dataclass(frozen=True)
class Day:
    buckets: int
    rows: int
    stale: int
    digest: str


@dataclass
class Refreshed:
    full: bool = False  # an unmarked change: every bucket was recomputed
    recomputed: int = 0
    removed: int = 0  # digests of buckets left without ticks
    seconds: float = 0.0


def refresh(conn: psycopg.Connection, since: datetime | None = None) -> Refreshed:
    """Recompute the stale digests (all of them after an unmarked change)."""
    t0 = time.monotonic()
    out = Refreshed()
    with conn.transaction():
        if conn.execute(query(__package__, "take_unmarked_change")).fetchone() is not None:
            out.full = True
            conn.execute(query(__package__, "mark_all_digests_stale"))
            conn.execute(query(__package__, "add_missing_digests"))
    stale = conn.execute(query(__package__, "stale_digests"), {"since": since}).fetchall()
    for i in range(0, len(stale), BATCH):
        chunk = stale[i:i + BATCH]
        n, gone = _recompute(conn, chunk)
        out.recomputed += n
        out.removed += gone
    out.seconds = time.monotonic() - t0
    if out.full or out.recomputed or out.removed:
        log.info("digests refreshed", full=out.full, recomputed=out.recomputed,
                 removed=out.removed, seconds=round(out.seconds, 2))
    return out


def _recompute(conn: psycopg.Connection, chunk: list[tuple]) -> tuple[int, int]:
    """One batch (its own statement). A writer that marks the same digest rows at once — a
    retention run marks every bucket before its cutoff — may deadlock with it: the batch is
    rolled back whole and run again (a version the writer moved is left stale anyway)."""
    for attempt in range(1, 6):
        try:
            with conn.transaction():
                return conn.execute(query(__package__, "recompute_digests"), [
                    [r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk],
                    [r[3] for r in chunk]]).fetchone()
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            if attempt == 5:
                raise
            log.warning("digest batch retried after a conflict", attempt=attempt)
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


def days(conn: psycopg.Connection, since: datetime | None = None) -> dict[DayKey, Day]:
    with conn.transaction():
        set_local_utc(conn)
        rows = conn.execute(query(__package__, "day_digests"), {"since": since}).fetchall()
    return {(m, s, d): Day(b, n, st, h) for m, s, d, b, n, st, h in rows}


def buckets(conn: psycopg.Connection, which: list[DayKey], since: datetime | None = None
            ) -> dict[Key, tuple[int | None, int | None]]:
    """{bucket: (ticks, digest)} of these days (None, None: stale)."""
    if not which:
        return {}
    rows = conn.execute(query(__package__, "bucket_digests"), [
        [m for m, _, _ in which], [s for _, s, _ in which], [d for _, _, d in which],
        since, since]).fetchall()
    return {(m, s, to_us(b)): (n, h) for m, s, b, n, h in rows}


