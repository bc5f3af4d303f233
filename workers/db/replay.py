"""Landing replays: landing objects (the source of truth) loaded into a database as they are.

`ingest s3://<landing bucket>/raw/<market>/<SYMBOL>/…` and `ingest --from-landing` replay the
bucket objects under a prefix; a restore replays what the restored database lacks. A prefix (or
--since/--until window) that selects no landing object is bad input (exit 2): the message names
it and says what landing does hold near it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from workers.core import logs
from workers.core.errors import BadInput
from workers.core.markets import MARKETS
from workers.core.pg import require_autocommit
from workers.core.ticks import iso, printable
from workers.db.bucket_locks import xact_lock
from workers.db.load import BucketLoad, known_buckets, load
from workers.db.summary import Summary
from workers.landing.rows import bucket_stats
from workers.landing.store import RAW, Landing, bucket_of_key, object_key

log = logs.get("ingest")
KEY_LAYOUT = "raw/<market>/<SYMBOL>/<YYYY-MM-DD>/<HHMM>.parquet"


def landing_keys(landing: Landing, prefix: str, *, since_us: int | None = None,
                 until_us: int | None = None, skipped: list[str] | None = None) -> list[str]:
    """Bucket objects under `prefix` (raw/...) whose bucket lies in [since, until); keys that
    are not bucket objects go to `skipped` (reported, never loaded). Where an old-layout
    object and a new one hold the same bucket (a move cut short), the new one is used."""
    chosen: dict[tuple[str, str, int], str] = {}
    for k in landing.keys(prefix):
        try:
            market, symbol, bucket = bucket_of_key(k)
        except ValueError as e:
            if skipped is not None:
                skipped.append(str(e))
            log.warning("landing key skipped", reason=str(e))
            continue
        if (since_us is None or bucket >= since_us) and (until_us is None or bucket < until_us):
            b = (market, symbol, bucket)
            if b not in chosen or k == object_key(*b):
                chosen[b] = k
    return sorted(chosen.values())


def replay(conn: psycopg.Connection, landing: Landing, keys: list[str], *, source: str,
           registry_is_current: bool = True, skip_unchanged: bool = False,
           progress: Callable[[Summary], None] | None = None) -> Summary:
    """Load landing objects into the database, 64 buckets per transaction (the one replay),
    each chunk under its buckets' locks.

    `registry_is_current`: the database's registry vouches for its objects, so an object that
    differs from its registry checksum is corrupt (a plain replay). False after a point-in-time
    restore, whose registry may predate objects that changed since: then each object is checked
    against the checksum stored with it. `skip_unchanged`: objects the registry already holds at
    their checksum are not loaded again (otherwise they go through ON CONFLICT and add nothing).
    """
    require_autocommit(conn)
    t0 = time.monotonic()
    summary = Summary(source=f"s3://{landing.bucket}/" + (_common_prefix(keys) or RAW))
    by_series: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for k in keys:
        market, symbol, bucket = bucket_of_key(k)
        by_series.setdefault((market, symbol), []).append((k, bucket))
    for (market, symbol), items in by_series.items():
        for i in range(0, len(items), 64):
            chunk = items[i:i + 64]
            with conn.transaction():
                xact_lock(conn, [(market, symbol, b) for _, b in chunk])
                known = known_buckets(conn, market, symbol, [b for _, b in chunk])
                loads = []
                rows = 0
                for key, bucket in chunk:
                    obj = landing.read_verified(
                        key, known.get(bucket) if registry_is_current else None)
                    rows += obj.table.num_rows
                    if skip_unchanged and known.get(bucket) == obj.sha256:
                        continue
                    loads.append(BucketLoad(market, symbol, bucket, obj.table, bucket in known,
                                            landing.uri(key), obj.sha256, obj.size,
                                            bucket_stats(obj.table), obj.etag))
                n = load(conn, loads, source=f"{source}:{symbol}") if loads else 0
            # Every row of an object is one trade: what the database did not take, it held.
            summary.rows_read += rows
            summary.accepted += rows
            summary.inserted += n
            summary.ticks_inserted += n
            summary.already_stored += rows - n
            summary.buckets_unchanged += len(loads)
            if progress:
                progress(summary)
    summary.seconds = time.monotonic() - t0
    return summary


def ingest_landing(conn: psycopg.Connection, landing: Landing, prefix: str, *,
                   since_us: int | None = None, until_us: int | None = None,
                   progress: Callable[[Summary], None] | None = None) -> Summary:
    """Replay landing objects under `prefix` (raw/...) into the database; each is checked
    against the registry's checksum (or, unregistered, the one stored with it). Keys that are
    not bucket objects are skipped and reported, never loaded. BadInput when the prefix and
    window select no landing object."""
    skipped: list[str] = []
    keys = landing_keys(landing, prefix, since_us=since_us, until_us=until_us, skipped=skipped)
    if not keys:
        raise BadInput(nothing_selected(landing, prefix, since_us, until_us, skipped))
    s = replay(conn, landing, keys, source="landing", progress=progress)
    s.source = f"s3://{landing.bucket}/{prefix}"
    s.skipped_keys = skipped
    return s


def _common_prefix(keys: list[str]) -> str:
    if not keys:
        return ""
    a, b = min(keys), max(keys)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n].rsplit("/", 1)[0] + "/" if "/" in a[:n] else ""




def nothing_selected(landing: Landing, prefix: str, since_us: int | None, until_us: int | None,
                     skipped: list[str]) -> str:
    """Why a replay selected nothing, and what landing holds near the prefix."""
    where = printable(landing.uri(prefix))
    if skipped:
        return (f"{where}: {len(skipped)} key(s) under this prefix, none a landing object "
                f"({KEY_LAYOUT}), e.g. {skipped[0]}")
    held = landing_keys(landing, prefix) if since_us is not None or until_us is not None else []
    if held:
        window = (f"[{iso(since_us) if since_us is not None else '…'}, "
                  f"{iso(until_us) if until_us is not None else '…'})")
        first, last = (iso(bucket_of_key(k)[2]) for k in (held[0], held[-1]))
        return (f"{where}: no landing object in {window}; the {len(held):,} under this prefix "
                f"hold buckets {first} … {last}")
    text = f"{where}: no landing objects under this prefix (keys are {KEY_LAYOUT})"
    parts = prefix.split("/")
    if parts[0] == RAW.rstrip("/") and len(parts) > 2 and parts[1] not in MARKETS:
        # The layout before markets (raw/<SYMBOL>/…): the same path under each market.
        rest = "/".join(parts[1:])
        hits = [f"{RAW}{m}/{rest}" for m in MARKETS if landing.any_under(f"{RAW}{m}/{rest}")]
        if hits:
            text += "; did you mean " + " or ".join(printable(h) for h in hits) + "?"
    parent, children = nearest_prefixes(landing, prefix)
    if children:
        more = ", …" if len(children) > 8 else ""
        text += (f"; under {printable(parent) or 'the bucket root'}: "
                 + ", ".join(printable(c) for c in children[:8]) + more)
    else:
        text += "; the landing bucket is empty"
    return text


def nearest_prefixes(landing: Landing, prefix: str) -> tuple[str, list[str]]:
    """The deepest folder above `prefix` that holds objects ("" for the bucket's root), and
    the first of its sub-folders."""
    parts = prefix.rstrip("/").split("/")
    for n in range(len(parts) - 1, -1, -1):
        parent = "/".join(parts[:n]) + "/" if n else ""
        children = landing.prefixes(parent, 9)
        if children:
            return parent, children
    return "", []
