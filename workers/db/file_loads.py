"""Completed loads of dump files: a rerun over files already loaded costs almost nothing.

Unchanged-ness is decided from two checksums, never by reading landing: the file's own SHA-256
(checked against its `.CHECKSUM` where Binance ships one) and a fingerprint of the registry
rows (`landing.raw_blobs_5m`: bucket, object SHA-256, URI) over the buckets the file covered.
Both are recorded in `ingestion.file_loads` once every flush of the file has committed; a file
is skipped when both are still the same. Anything else — another file under the same name, a
bucket of its range rewritten, moved or removed since — loads the file again through the full
path, which is exact on its own.

What a skip guarantees: every accepted row of the file is in landing, in the registry's objects
and in the ticks. At completion each of its buckets was registered with an object holding its
rows (ticks commit with their registry row); an equal fingerprint means the very same objects
are registered now. Concurrent writers cannot break this between the check and the skip:
every writer of a bucket object merges (a union, under the bucket's lock) and registers what it
stored, so a bucket only ever gains rows — a writer that commits after the check changes the
fingerprint for the next run, not the truth of this one. Landing objects lost or changed by
something other than tickstack's writers are seen by the caller: before a skip, ingest lists
landing over the file's range against these registry rows (workers/db/landing_audit.py, nothing
read) and loads the file again when any is missing or changed. Not seen: ticks that retention
removed on purpose (a full rerun does not bring them back either: their buckets are registered
and unchanged).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import psycopg

from workers.core import logs
from workers.core.sqlfiles import query
from workers.core.ticks import to_dt, to_us

if TYPE_CHECKING:
    from workers.db.summary import Summary
    from workers.landing.store import Landing
    from workers.sources.binance_files import TradeFile

log = logs.get("ingest")


@dataclass(frozen=True)
class FileLoad:
    file_name: str
    first_bucket_us: int
    last_bucket_us: int
    fingerprint: str
    rows_read: int
    accepted: int
    quarantined: int
    quarantine_uri: str | None
    loaded_at: datetime


def fingerprint(conn: psycopg.Connection, market: str, symbol: str, first_us: int,
                last_us: int) -> str:
    return conn.execute(query(__package__, "registry_fingerprint"),
                        [market, symbol, to_dt(first_us), to_dt(last_us)]).fetchone()[0]


def find(conn: psycopg.Connection, market: str, symbol: str, sha256: str) -> FileLoad | None:
    r = conn.execute(query(__package__, "file_load"), [market, symbol, sha256]).fetchone()
    if r is None:
        return None
    name, first, last, fp, read, accepted, quarantined, uri, at = r
    return FileLoad(name, to_us(first), to_us(last), fp, read, accepted, quarantined, uri, at)


def unchanged(conn: psycopg.Connection, market: str, symbol: str, sha256: str
              ) -> FileLoad | None:
    """The recorded load of this file when nothing it covered has changed since; else None."""
    done = find(conn, market, symbol, sha256)
    if done is None:
        return None
    now = fingerprint(conn, market, symbol, done.first_bucket_us, done.last_bucket_us)
    return done if now == done.fingerprint else None


def skipped(conn: psycopg.Connection, landing: Landing, tf: TradeFile, source: str,
            started: float) -> Summary | None:
    """The summary of skipping `tf` when its load completed before, nothing it covered has
    changed since and landing still holds its buckets' objects (listed, not read); None when
    the file must be loaded. Needs no pyarrow: a rerun over loaded files starts fast."""
    from workers.db import landing_audit
    from workers.db.summary import Summary

    done = unchanged(conn, tf.market, tf.symbol, tf.sha256)
    if done is None:
        return None
    lost = landing_audit.audit(conn, landing, market=tf.market, symbol=tf.symbol,
                               first_us=done.first_bucket_us, last_us=done.last_bucket_us)
    if not lost.ok:
        log.warning("file loaded before, but landing lost objects of its buckets: landing "
                    "it again", file=tf.path.name, lost=lost.lost)
        return None
    summary = Summary(source=source)
    summary.files_skipped = 1
    summary.loaded_at = done.loaded_at.isoformat(timespec="seconds")
    summary.quarantine_uri = done.quarantine_uri
    summary.seconds = time.monotonic() - started
    log.info("file unchanged since its load: skipped", file=tf.path.name,
             loaded_at=summary.loaded_at)
    return summary


def record(conn: psycopg.Connection, market: str, symbol: str, sha256: str, file_name: str,
           first_us: int, last_us: int, *, rows_read: int, accepted: int, quarantined: int,
           quarantine_uri: str | None) -> None:
    """Call once every flush of the file has committed (the fingerprint is taken now)."""
    fp = fingerprint(conn, market, symbol, first_us, last_us)
    conn.execute(query(__package__, "record_file_load"), [
        market, symbol, sha256, file_name[-255:], to_dt(first_us), to_dt(last_us), fp,
        rows_read, accepted, quarantined, quarantine_uri])
