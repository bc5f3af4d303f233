"""`workers replicate`: catch the dual-write replica up from landing, then prove equality.

1. Compare: per (symbol, 5-minute bucket) a row count and a content checksum, computed by the
   same SQL on both servers (md5 over the canonical text of every tick, ordered by trade id; the
   session runs in UTC so timestamps render identically on TimescaleDB and plain PostgreSQL).
2. Catch up (not with --check): every bucket the replica misses or holds differently, and every
   bucket `ingestion.replica_lag` names, is rebuilt on the replica from landing — the bucket's
   object (SHA-256 checked against the primary's registry) and any live-stream parts not yet
   compacted into it (SHA-256 checked against their stored checksum) — in one transaction per
   bucket: delete the bucket's ticks there, insert the landed rows, upsert registry + aggregate.
3. Compare again; lag rows of buckets now equal are cleared. Buckets still differing are
   reported, and the command exits 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import pyarrow as pa

from workers.core import logs
from workers.core.errors import Failed
from workers.core.pg import require_autocommit
from workers.core.sqlfiles import query
from workers.core.ticks import iso, to_dt, to_us
from workers.db.load import BucketLoad, advance_offset, load
from workers.db.stream_commit import insert_ticks
from workers.landing.parts import read_parts
from workers.landing.store import Landing, bucket_stats, merge

log = logs.get("replicate")


Key = tuple[str, int]  # (symbol, bucket µs)


class ReplicateError(Failed):
    pass


@dataclass
class Comparison:
    primary: dict[Key, tuple[int, str]]
    replica: dict[Key, tuple[int, str]]

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
        name = f"{k[0]} {iso(k[1])}"
        if r is None:
            return f"{name}: missing on the replica (primary {p[0]} rows)"
        if p is None:
            return f"{name}: only on the replica ({r[0]} rows)"
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
               f"{b['missing']}, different {b['different']}, only on the replica {b['extra']}"]
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
        return f"{verb}: all {a.get('buckets', 0)} buckets equal (count + checksum) — {state}" \
               f"; lag rows cleared {self.lag_cleared}, open {self.lag_open}"

    def as_dict(self) -> dict:
        return {"check_only": self.check_only, "before": self.before, "after": self.after,
                "caught_up": self.caught_up, "rows_loaded": self.rows_loaded,
                "lag_cleared": self.lag_cleared, "lag_open": self.lag_open,
                "differing": self.differing, "changed": self.changed, "did": self.summary(),
                "seconds": round(self.seconds, 3)}


def checksums(conn: psycopg.Connection, since: datetime | None = None
              ) -> dict[Key, tuple[int, str]]:
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        rows = conn.execute(query(__package__, "bucket_checksums"), {"since": since}).fetchall()
    return {(s, to_us(b)): (n, h) for s, b, n, h in rows}


def compare(primary: psycopg.Connection, replica: psycopg.Connection,
            since: datetime | None = None) -> Comparison:
    return Comparison(checksums(primary, since), checksums(replica, since))


def lag_buckets(primary: psycopg.Connection) -> list[Key]:
    return [(s, to_us(b)) for s, b in primary.execute(
        "SELECT symbol, bucket_5m FROM ingestion.replica_lag ORDER BY 1, 2")]


def landed_rows(primary: psycopg.Connection, landing: Landing, key: Key
                ) -> tuple[pa.Table | None, BucketLoad | None]:
    """The bucket's rows as landed (object + uncompacted stream parts), SHA-256 verified."""
    symbol, bucket = key
    reg = primary.execute(
        "SELECT s3_uri, metadata->>'sha256', object_size_bytes FROM landing.raw_blobs_5m "
        "WHERE asset = %s AND bucket_5m = %s", [symbol, to_dt(bucket)]).fetchone()
    tables = []
    if reg:
        uri, sha, _ = reg
        tables.append(landing.read_verified(landing.key_of(uri), sha).table)
    parts = read_parts(landing, symbol, bucket)
    tables += [t for _, t in parts]
    if not tables:
        return None, None
    table = tables[0] if len(tables) == 1 else merge(tables[0], pa.concat_tables(tables[1:])
                                                       ).table
    if reg and not parts:
        return table, BucketLoad(symbol, bucket, table, False, reg[0], reg[1], reg[2],
                                 bucket_stats(table))
    return table, None


def catch_up_bucket(primary: psycopg.Connection, replica: psycopg.Connection, landing: Landing,
                    key: Key) -> int | None:
    """Rebuild one bucket on the replica from landing; rows inserted (None: nothing landed)."""
    table, bl = landed_rows(primary, landing, key)
    if table is None:
        return None
    symbol, bucket = key
    with replica.transaction():
        replica.execute("DELETE FROM market_data.btc_ticks WHERE symbol = %s AND bucket_5m = %s",
                        [symbol, to_dt(bucket)])
        if bl is not None:  # a registered, complete bucket: registry and aggregate too
            return load(replica, [bl], source="replicate")
        return insert_ticks(replica, symbol, table)  # an open stream bucket: ticks only


def sync_offsets(primary: psycopg.Connection, replica: psycopg.Connection) -> None:
    rows = primary.execute("SELECT source, symbol, last_trade_id, last_event_time "
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
            k for k in lagging if since is None or k[1] >= since.timestamp() * 1e6})
        for key in todo:
            n = catch_up_bucket(primary, replica, landing, key)
            if n is None:
                continue
            res.caught_up += 1
            res.rows_loaded += n
            log.info("bucket caught up", symbol=key[0], bucket=iso(key[1]), rows=n)
        if todo:
            cmp = compare(primary, replica, since)
        sync_offsets(primary, replica)
    res.after = _state(cmp)
    bad = set(cmp.differing())
    res.differing = [cmp.describe(k) for k in sorted(bad)]
    if not check_only:
        done = [k for k in lagging if k not in bad
                and (since is None or k[1] >= since.timestamp() * 1e6)]
        if done:
            primary.execute(
                "DELETE FROM ingestion.replica_lag WHERE (symbol, bucket_5m) IN "
                "(SELECT * FROM unnest(%s::text[], %s::timestamptz[]))",
                [[s for s, _ in done], [to_dt(b) for _, b in done]])
        res.lag_cleared = len(done)
    res.lag_open = primary.execute("SELECT count(*) FROM ingestion.replica_lag").fetchone()[0]
    res.seconds = time.monotonic() - t0
    return res


def _state(cmp: Comparison) -> dict:
    return {"buckets": len(cmp.replica), "rows": sum(n for n, _ in cmp.replica.values()),
            "primary_buckets": len(cmp.primary),
            "primary_rows": sum(n for n, _ in cmp.primary.values()),
            "missing": len(cmp.missing), "different": len(cmp.different),
            "extra": len(cmp.extra)}
