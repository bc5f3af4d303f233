"""`workers repair [--check] [--since T]`: give the primary back what landing holds and it lost.

Landing is the source of truth; the primary can still lose rows of it — a DELETE by a login
that could (before sql/021), by hand, by a tool outside tickstack. `replicate --check` sees
such a primary as differing from the replica, but replicate rebuilds only the replica. This
repairs the primary, as the ingest login (no DELETE needed: missing rows are inserted):

1. refresh the primary's tick digests (workers/replica/digests.py: stale ones, or all of them
   after a change no tickstack writer marked — which a DELETE outside tickstack is);
2. compare every registered bucket (from `since`) with its registry row: the object's row
   count against the bucket's tick count, and whether its 5-minute aggregate row is there.
   Buckets retention removed on purpose are not losses: ticks of a bucket below the newest
   cut-off retention applied to the table (ops.retention_horizon) with none left and no chunk
   covering it (retention drops whole chunks: the one holding the cut-off stays, with its
   buckets below it), aggregates below the aggregate's;
3. re-load the buckets that fall short from their landing objects (the one replay,
   workers/db/ingest.py: SHA-256 checked against the registry, under each bucket's lock, ticks
   through ON CONFLICT DO NOTHING, registry and aggregate upserted, digests marked);
4. refresh and compare again: a bucket still short fails the run (exit 1).

A short bucket whose landing object is gone too, or no longer matches its registry checksum,
cannot be repaired from the source of truth: it is named with that reason (exit 1), and every
other short bucket is repaired all the same.

Rows the primary holds beyond the landed object (more ticks than the registry counts) are
reported, never changed: removing rows needs DELETE, which the ingest login does not have, and
they may be stream trades whose parts are not compacted yet. A bucket with the right count but
other values is not detected here (the digest is not computed from landing); `replicate
--check` reports it as differing from the replica.

Idempotent: a second run finds nothing to do. Safe beside every other writer: loads take the
buckets' locks as ingest does and only add rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from workers.core import logs
from workers.core.markets import BucketId
from workers.core.pg import require_autocommit
from workers.core.sqlfiles import query
from workers.core.ticks import iso, to_us
from workers.db.ingest import replay
from workers.landing.store import CorruptObject, Landing
from workers.replica import digests

log = logs.get("repair")

TICKS, OHLCV = "market_data.btc_ticks", "market_data.btc_ohlcv_5m"


@dataclass
class Bucket:
    key: BucketId
    uri: str
    landed: int  # rows of the landing object (the registry's count)
    held: int  # ticks on the primary
    stale: bool  # being written while compared
    has_ohlcv: bool

    def describe(self) -> str:
        name = f"{self.key.market} {self.key.symbol} {iso(self.key.start_us)}"
        agg = "" if self.has_ohlcv else "; aggregate row missing"
        if self.held < self.landed:
            return f"{name}: {self.held} of {self.landed} landed ticks on the primary{agg}"
        if self.held > self.landed:
            return (f"{name}: {self.held} ticks on the primary, {self.landed} in the landed "
                    f"object (left as they are){agg}")
        return f"{name}: aggregate row missing"


@dataclass
class Findings:
    short: list[Bucket] = field(default_factory=list)  # ticks or the aggregate to re-load
    extra: list[Bucket] = field(default_factory=list)  # more on the primary than landed
    retained: int = 0  # buckets retention removed on purpose
    being_written: int = 0


@dataclass
class Result:
    check_only: bool
    before: Findings
    after: Findings | None = None
    repaired: int = 0
    rows_inserted: int = 0
    seconds: float = 0.0
    unrepairable: list[tuple[Bucket, str]] = field(default_factory=list)  # (bucket, why)

    @property
    def remaining(self) -> list[Bucket]:
        return (self.before if self.after is None else self.after).short

    @property
    def changed(self) -> bool:
        return bool(self.rows_inserted or self.repaired)

    @property
    def ok(self) -> bool:
        return not self.remaining and not self.unrepairable

    def summary(self) -> str:
        b = self.before
        found = (f"{len(b.short)} bucket(s) of the primary fall short of landing"
                 if b.short else "the primary holds every landed bucket")
        if self.check_only:
            return found
        if not b.short:
            return found + ", nothing to repair"
        tail = (f"; {len(self.remaining)} still short" if self.remaining else
                "; now equal to landing")
        if self.unrepairable:
            tail += (f"; {len(self.unrepairable)} cannot be repaired: landing no longer holds "
                     "their objects as registered")
        return (f"{found}: re-loaded {self.repaired} from landing ({self.rows_inserted:,} "
                f"ticks inserted){tail}")

    def details(self) -> list[str]:
        out = [f"short: {b.describe()}" for b in self.before.short[:50]]
        out += [f"cannot repair: {b.describe()}: {why}" for b, why in self.unrepairable[:50]]
        if len(self.before.short) > 50:
            out.append(f"… and {len(self.before.short) - 50} more")
        last = self.after or self.before
        out += [f"extra: {b.describe()}" for b in last.extra[:20]]
        if last.retained:
            out.append(f"{last.retained} registered bucket(s) below retention's cut-off "
                       "(removed on purpose, not re-loaded)")
        if last.being_written:
            out.append(f"{last.being_written} bucket(s) being written while compared "
                       "(not compared; run again)")
        if self.after is not None:
            out += [f"still short: {b.describe()}" for b in self.after.short[:50]]
        return out

    def as_dict(self) -> dict:
        def f(x: Findings | None) -> dict | None:
            return None if x is None else {
                "short": [b.describe() for b in x.short], "extra": [b.describe() for b in x.extra],
                "retained": x.retained, "being_written": x.being_written}

        return {"check_only": self.check_only, "before": f(self.before), "after": f(self.after),
                "repaired": self.repaired, "rows_inserted": self.rows_inserted,
                "unrepairable": [f"{b.describe()}: {why}" for b, why in self.unrepairable],
                "changed": self.changed, "ok": self.ok, "did": self.summary(),
                "seconds": round(self.seconds, 3)}


def find(conn: psycopg.Connection, since: datetime | None = None) -> Findings:
    """Refresh the primary's digests, then hold every registered bucket against landing."""
    digests.refresh(conn, since)
    tick_cut, ohlcv_cut = conn.execute(query(__package__, "retention_cutoffs"),
                                       [TICKS, OHLCV]).fetchone()
    kept = _tick_chunks(conn)  # chunks retention did not drop (None: not a hypertable)
    out = Findings()
    for market, symbol, bucket, uri, landed, held, stale, has_ohlcv in conn.execute(
            query(__package__, "repair_compare"), {"since": since}):
        b = Bucket(BucketId(market, symbol, to_us(bucket)), uri, landed, held, stale, has_ohlcv)
        if stale:
            out.being_written += 1
            continue
        ticks_gone = (held == 0 and tick_cut is not None and bucket < tick_cut
                      and not any(lo <= bucket < hi for lo, hi in kept or ()))
        ohlcv_gone = not has_ohlcv and ohlcv_cut is not None and bucket < ohlcv_cut
        if ticks_gone or (held == landed and ohlcv_gone):
            out.retained += 1
        elif held < landed or (held == landed and not has_ohlcv):
            out.short.append(b)
        elif held > landed:
            out.extra.append(b)
    return out


def _tick_chunks(conn: psycopg.Connection) -> list[tuple[datetime, datetime]] | None:
    """The ranges of the ticks' chunks that exist (TimescaleDB; None elsewhere, where
    retention deletes every row below its cut-off)."""
    if not conn.execute(query(__package__, "has_timescaledb")).fetchone():
        return None
    return conn.execute(query(__package__, "tick_chunk_ranges")).fetchall()


def run(conn: psycopg.Connection, landing: Landing, *, check_only: bool = False,
        since: datetime | None = None) -> Result:
    """`conn`: the primary, as the ingest login (autocommit)."""
    require_autocommit(conn, "repair")
    t0 = time.monotonic()
    res = Result(check_only, find(conn, since))
    todo = _in_landing(landing, res) if res.before.short else []
    if not check_only and res.before.short:
        if todo:
            _reload(conn, landing, res, todo)
        res.after = find(conn, since)
        # A bucket of flagged trades only (insurance fund, ADL) has no aggregate to re-load.
        res.after.short = [b for b in res.after.short if b.held != b.landed]
        log.info("primary repaired from landing", buckets=res.repaired,
                 ticks=res.rows_inserted, still_short=len(res.after.short),
                 unrepairable=len(res.unrepairable))
        for b, why in res.unrepairable:
            log.error("bucket cannot be repaired from landing", bucket=b.describe(), reason=why)
    res.seconds = time.monotonic() - t0
    return res


def _in_landing(landing: Landing, res: Result) -> list[tuple[Bucket, str]]:
    """The short buckets whose objects landing still lists, with their keys; the others go
    to `res.unrepairable` (also with --check: what a repair could not do is known now)."""
    todo: list[tuple[Bucket, str]] = []
    listed: dict[str, set[str]] = {}
    for b in res.before.short:
        key = landing.key_of(b.uri)
        day = key.rsplit("/", 1)[0] + "/"
        if day not in listed:
            listed[day] = set(landing.keys(day, suffix=""))
        if key in listed[day]:
            todo.append((b, key))
        else:
            res.unrepairable.append((b, f"{b.uri} is missing from landing (the source of "
                                        "truth lost it too: nothing to repair from)"))
    return todo


def _reload(conn: psycopg.Connection, landing: Landing, res: Result,
            todo: list[tuple[Bucket, str]]) -> None:
    """Replay the short buckets' objects; one that no longer matches its registry checksum
    (or vanished meanwhile) goes to `res.unrepairable` (named, with why), the rest still load."""

    def one(items: list[tuple[Bucket, str]]) -> None:
        s = replay(conn, landing, [k for _, k in items], source="repair")
        res.repaired += s.buckets_unchanged
        res.rows_inserted += s.inserted

    series = sorted({b.key[:2] for b, _ in todo})
    for m in series:  # chunks of one series: one transaction each (replay's)
        mine = [t for t in todo if t[0].key[:2] == m]
        for i in range(0, len(mine), 64):
            chunk = mine[i:i + 64]
            try:
                one(chunk)
            except (CorruptObject, landing.s3.exceptions.NoSuchKey):
                for item in chunk:  # rolled back whole: one at a time, naming the bad ones
                    try:
                        one([item])
                    except landing.s3.exceptions.NoSuchKey:
                        res.unrepairable.append((item[0], f"{item[0].uri} is missing from "
                                                          "landing"))
                    except CorruptObject as e:
                        res.unrepairable.append((item[0], str(e)))
