"""Does landing still hold what the registry vouches for? The landing audit.

Landing is the source of truth and `landing.raw_blobs_5m` vouches for it. Whatever trusts the
registry without reading landing — the skip of a file loaded before, `replicate`'s comparison
of the two databases, a backup check — would carry on while the objects are gone. The audit
compares the two cheaply: the registry rows against a listing of landing (one LIST per 1,000
keys, nothing read):

* missing: a registered object that is not in landing (deleted, bucket emptied or recreated);
* changed: one whose size, or ETag where the registry recorded one, is not what was registered,
  and whose SHA-256 (only then read) is not the registered one either;
* elsewhere: a registry row naming a bucket other than the configured landing bucket;
* unregistered: a bucket object that no registry row names (a load cut short between landing
  and its commit, or a registry that lost rows): not a loss — landing holds it, and
  `workers ingest s3://<bucket>/raw/…` loads it.

The first three mean the source of truth no longer holds data the platform relies on: `ok` is
False and every face says so (exit 1).

Right while writers run: the registry is read before landing is listed, and every suspect is
looked at again, one day at a time, under its buckets' shared locks (every writer holds a
bucket's lock from before it writes the object until its registry row has committed) with the
registry re-read and the day listed again — an object being merged, moved or registered at the
time is never reported.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from workers.core.errors import Failed
from workers.core.markets import BucketId
from workers.core.sqlfiles import query
from workers.core.ticks import iso, to_dt, to_us
from workers.db.bucket_locks import xact_lock
from workers.landing.store import RAW, Landing, Stored, bucket_of_key

DAY_US = 86_400_000_000
SKEW = timedelta(minutes=10)  # a writer's object predates its registry commit; clocks differ
SHOWN = 5  # keys named per kind in the summary (details() lists them all by day)

REMEDY = ("Put them back: `workers landing --reland-from-primary` writes back every object "
          "whose registered SHA-256 the primary's ticks reproduce exactly; for the rest "
          "re-ingest the source files that covered them (`workers ingest FILE…` lands a file "
          "again when objects of its buckets are missing or changed, even if it was loaded "
          "before), or restore the objects' previous versions if the bucket kept them. Until "
          "then `replicate` and `restore` cannot rebuild these buckets from landing")


@dataclass(frozen=True)
class Registered:
    """One registry row: where its object is and what it was when registered."""

    market: str
    symbol: str
    bucket_us: int
    uri: str
    size: int
    sha256: str
    etag: str | None
    registered_at: datetime | None = None  # the row's last update

    @property
    def id(self) -> BucketId:
        return self.market, self.symbol, self.bucket_us


@dataclass
class Audit:
    """What the audit found; `ok` False when landing lacks or changed registered objects."""

    bucket: str
    scope: str = "raw/"
    registered: int = 0
    listed: int = 0
    missing: list[Registered] = field(default_factory=list)
    altered: list[tuple[Registered, str]] = field(default_factory=list)  # (row, what differs)
    elsewhere: list[Registered] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    rechecked: int = 0  # suspects looked at again under their buckets' locks
    seconds: float = 0.0
    changed: bool = False  # an audit changes nothing

    @property
    def ok(self) -> bool:
        return not (self.missing or self.altered or self.elsewhere)

    @property
    def lost(self) -> int:
        return len(self.missing) + len(self.altered) + len(self.elsewhere)

    def lost_objects(self) -> list[Registered]:
        """Registered objects landing no longer holds as registered (in this bucket)."""
        return self.missing + [r for r, _ in self.altered]

    def summary(self) -> str:
        where = f"s3://{self.bucket}/{self.scope}"
        if self.ok:
            text = (f"landing holds every registered object ({self.registered:,} registered, "
                    f"{self.listed:,} listed in {where})")
        else:
            parts = [f"{len(self.missing):,} missing"] * bool(self.missing) + \
                [f"{len(self.altered):,} changed since registered"] * bool(self.altered) + \
                [f"{len(self.elsewhere):,} registered in another bucket"] * bool(self.elsewhere)
            examples = [r.uri for r in self.missing[:SHOWN]] + \
                [f"{r.uri} ({why})" for r, why in self.altered[:SHOWN]] + \
                [r.uri for r in self.elsewhere[:SHOWN]]
            text = (f"LANDING LOST: {self.lost:,} of {self.registered:,} registered objects are "
                    f"not in {where} as registered ({', '.join(parts)}) — the source of truth "
                    f"no longer holds them: {'; '.join(self._days())}; e.g. "
                    f"{', '.join(examples[:SHOWN])}. {REMEDY}.")
        if self.unregistered:
            text += (f"; {len(self.unregistered):,} object(s) in landing that no registry row "
                     f"names (a load cut short?), e.g. s3://{self.bucket}/"
                     f"{self.unregistered[0]}: `workers ingest s3://{self.bucket}/raw/…` "
                     "loads them")
        return text

    def headline(self) -> str:
        """One short clause: what `replicate` and `backup --check` add to their summary."""
        if self.ok:
            return (f"landing holds every registered object ({self.registered:,})"
                    + (f", {len(self.unregistered):,} unregistered" if self.unregistered
                       else ""))
        return (f"LANDING LOST: {self.lost:,} of {self.registered:,} registered objects not in "
                f"s3://{self.bucket}/ as registered")

    def _days(self) -> list[str]:
        """'spot BTCUSDT 2019-04-01: 288 bucket(s)' per day with a loss."""
        n = Counter((r.market, r.symbol, iso(r.bucket_us - r.bucket_us % DAY_US)[:10])
                    for r in self.missing + [r for r, _ in self.altered] + self.elsewhere)
        return [f"{m} {s} {d}: {c} bucket(s)" for (m, s, d), c in sorted(n.items())]

    def problems(self) -> list[str]:
        return [] if self.ok else [self.summary()]

    def details(self, limit: int = 100) -> list[str]:
        """One line per object found wrong (the first `limit`; as_dict() has all)."""
        lines = ([f"missing: {r.uri} ({r.market} {r.symbol} {iso(r.bucket_us)})"
                 for r in self.missing]
                 + [f"changed: {r.uri}: {why}" for r, why in self.altered]
                 + [f"elsewhere: {r.uri} (landing bucket is {self.bucket})"
                    for r in self.elsewhere]
                 + [f"unregistered: s3://{self.bucket}/{k}" for k in self.unregistered])
        return lines[:limit] + [f"… and {len(lines) - limit:,} more"] * (len(lines) > limit)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "bucket": self.bucket, "scope": self.scope,
                "registered": self.registered, "listed": self.listed,
                "missing": [r.uri for r in self.missing],
                "changed": [{"uri": r.uri, "why": why} for r, why in self.altered],
                "elsewhere": [r.uri for r in self.elsewhere],
                "unregistered": [f"s3://{self.bucket}/{k}" for k in self.unregistered],
                "rechecked": self.rechecked, "seconds": round(self.seconds, 3)}


def _rows(cur_rows) -> list[Registered]:
    return [Registered(m, s, to_us(b), uri, size, sha, etag, at)
            for m, s, b, uri, size, sha, etag, at in cur_rows]


def registry(conn: psycopg.Connection, *, market: str | None = None, symbol: str | None = None,
             first_us: int | None = None, last_us: int | None = None) -> list[Registered]:
    return _rows(conn.execute(query(__package__, "registry_objects"), {
        "market": market, "symbol": symbol,
        "first": None if first_us is None else to_dt(first_us),
        "last": None if last_us is None else to_dt(last_us)}).fetchall())


def _key(landing: Landing, r: Registered) -> str | None:
    """The row's key in the landing bucket; None when it names another bucket."""
    try:
        return landing.key_of(r.uri)
    except Failed:
        return None


def verdict(landing: Landing, r: Registered, key: str, now: Stored | None
             ) -> str | None:
    """None when `now` is the registered object; else what differs ('missing' or why). Reads
    the object only when its ETag alone differs (the same bytes stored again get a new ETag
    where the store does not derive it from the content, as with SSE-KMS)."""
    if now is None:
        return "missing"
    if now.size != r.size:
        return f"{now.size:,} bytes, registered {r.size:,}"
    if now.etag == r.etag if r.etag is not None else not _rewritten(r, now):
        return None
    try:
        got = landing.sha256_of(key)  # bytes only: whatever replaced it need not parse
    except landing.s3.exceptions.NoSuchKey:
        return "missing"
    return None if got == r.sha256 else f"SHA-256 {got}, registered {r.sha256}"


def _rewritten(r: Registered, now: Stored) -> bool:
    """A row that recorded no ETag (registered before ETags were, sql/018's era): its object
    was written again well after the row was (a same-size change the size cannot show)."""
    return bool(now.modified and r.registered_at and now.modified > r.registered_at + SKEW)


def audit(conn: psycopg.Connection, landing: Landing, *, market: str | None = None,
          symbol: str | None = None, first_us: int | None = None, last_us: int | None = None
          ) -> Audit:
    """Compare the registry (all of it, or one market / symbol / bucket range) with landing.
    `conn`: any login that reads landing.raw_blobs_5m, in autocommit mode."""
    t0 = time.monotonic()
    scoped = any(v is not None for v in (market, symbol, first_us, last_us))
    out = Audit(landing.bucket, scope=RAW if not scoped else _scope(market, symbol,
                                                                     first_us, last_us))
    rows = registry(conn, market=market, symbol=symbol, first_us=first_us, last_us=last_us)
    out.registered = len(rows)
    # Registry first, then landing: an object registered after the read shows up as
    # unregistered (rechecked below), never a registered one as missing.
    listed = _list(landing, rows) if scoped else landing.stored(RAW)
    out.listed = len(listed)

    def in_scope(b: BucketId) -> bool:
        return ((market is None or b[0] == market) and (symbol is None or b[1] == symbol)
                and (first_us is None or b[2] >= first_us)
                and (last_us is None or b[2] <= last_us))

    named: set[str] = set()
    suspects: dict[BucketId, list[str]] = defaultdict(list)  # bucket -> keys to look at again
    for r in rows:
        key = _key(landing, r)
        if key is None:
            out.elsewhere.append(r)  # the configuration, not the objects: no listing helps
            continue
        named.add(key)
        now = listed.get(key)
        if now is None or now.size != r.size or (now.etag != r.etag if r.etag is not None
                                                 else _rewritten(r, now)):
            suspects[r.id].append(key)
    for key in listed:
        if key in named:
            continue
        try:
            b = bucket_of_key(key)
        except ValueError:
            continue  # not a bucket object (no registry row could name it)
        if in_scope(b):
            suspects[b].append(key)
    _recheck(conn, landing, suspects, out)
    out.missing.sort(key=lambda r: r.uri)
    out.altered.sort(key=lambda a: a[0].uri)
    out.unregistered.sort()
    out.seconds = time.monotonic() - t0
    return out


def _scope(market, symbol, first_us, last_us) -> str:
    parts = [p for p in (market, symbol) if p]
    if first_us is not None or last_us is not None:
        parts.append(f"{iso(first_us) if first_us is not None else '…'}.."
                     f"{iso(last_us) if last_us is not None else '…'}")
    return f"{RAW} ({' '.join(parts)})"


def _list(landing: Landing, rows: list[Registered]) -> dict[str, Stored]:
    """The objects of the key ranges these rows span, per series prefix (one LIST per 1,000
    keys of each range)."""
    spans: dict[str, tuple[str, str]] = {}
    for r in rows:
        key = _key(landing, r)
        if key is None:
            continue
        prefix = key.rsplit("/", 2)[0] + "/"
        lo, hi = spans.get(prefix, (key, key))
        spans[prefix] = (min(lo, key), max(hi, key))
    out: dict[str, Stored] = {}
    for prefix, (lo, hi) in sorted(spans.items()):
        out.update(landing.stored(prefix, lo, hi))
    return out


def _recheck(conn: psycopg.Connection, landing: Landing,
             suspects: dict[BucketId, list[str]], out: Audit) -> None:
    """Look at every suspect again, a day at a time, under its buckets' shared locks: the
    registry re-read, the day's objects listed again, the verdict taken from those."""
    by_day: dict[tuple[str, str, int], list[BucketId]] = defaultdict(list)
    for b in suspects:
        by_day[(b[0], b[1], b[2] - b[2] % DAY_US)].append(b)
    for day in sorted(by_day):
        ids = sorted(by_day[day])
        with conn.transaction():
            xact_lock(conn, ids, shared=True)
            fresh = {r.id: r for r in _rows(conn.execute(
                query(__package__, "registry_objects_of"),
                [[b[0] for b in ids], [b[1] for b in ids], [to_dt(b[2]) for b in ids]]
            ).fetchall())}
            keys = {k for b in ids for k in suspects[b]}
            keys |= {k for r in fresh.values() if (k := _key(landing, r)) is not None}
            now: dict[str, Stored] = {}
            for prefix in sorted({k.rsplit("/", 1)[0] + "/" for k in keys}):
                now.update(landing.stored(prefix))
            for b in ids:
                out.rechecked += 1
                r = fresh.get(b)
                key = _key(landing, r) if r is not None else None
                if key is not None:  # (a row naming another bucket was reported above)
                    why = verdict(landing, r, key, now.get(key))
                    if why == "missing":
                        out.missing.append(r)
                    elif why is not None:
                        out.altered.append((r, why))
                out.unregistered += [k for k in suspects[b] if k != key and k in now]
