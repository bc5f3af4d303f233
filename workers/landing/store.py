"""The S3 landing bucket: one Parquet object per (market, symbol, 5-minute bucket), merged on
overlap.

Landing is the source of truth: everything downstream can be rebuilt from these objects. The
bucket is versioned, so a merge that rewrites an object keeps the previous version. This module
owns the bucket: its keys, listing, reads verified against a checksum, and the read-merge-write
of a bucket object (`Landing.merge_into`), which every writer (file ingest, stream compaction)
goes through — under the bucket's lock (workers/db/bucket_locks.py), with a conditional write
(If-Match / If-None-Match) as a second guard where the store supports it.

Keys: `raw/<market>/<SYMBOL>/<YYYY-MM-DD>/<HHMM>.parquet`. Objects of the layout before markets
(`raw/<SYMBOL>/...`) are spot; the next write of such a bucket moves it to the new key.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from workers.core.errors import BadInput, Failed
from workers.core.markets import MARKETS, SYMBOL_PATTERN, BucketId
from workers.core.ticks import (
    BUCKET_US,
    SCHEMA_VERSION,
    conform,
    printable,
    tick_schema,
    to_dt,
    to_us,
)

if TYPE_CHECKING:  # pyarrow loads when an object is read or written: listing needs none
    import pyarrow as pa

    from workers.landing.rows import Merge

PRODUCER = "tickstack-ingest"


RAW = "raw/"
Bucket = BucketId  # (market, symbol, bucket start µs): a bucket's identity


def object_key(market: str, symbol: str, bucket_us: int) -> str:
    t = to_dt(bucket_us)
    return f"{RAW}{market}/{symbol}/{t:%Y-%m-%d}/{t:%H%M}.parquet"


def bucket_of_key(key: str) -> Bucket:
    """(market, symbol, bucket µs) of a landing object key (the layout before markets is spot);
    ValueError when the key is not one."""
    parts = key.split("/")
    if parts[0] != RAW.rstrip("/") or not parts[-1].endswith(".parquet") or len(parts) not in (
            4, 5):
        raise ValueError(f"not a landing object key (raw/<market>/<SYMBOL>/<date>/<HHMM>.parquet):"
                         f" {printable(key)}")
    market = parts[1] if len(parts) == 5 else "spot"
    symbol, day, name = parts[-3:]
    if market not in MARKETS or not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"not a landing object key (market or symbol): {printable(key)}")
    try:
        t = datetime.strptime(f"{day} {name.removesuffix('.parquet')}", "%Y-%m-%d %H%M")
    except ValueError:
        raise ValueError(f"not a landing object key (date/time): {printable(key)}") from None
    bucket = to_us(t)
    if bucket % BUCKET_US:
        raise ValueError(f"not a landing object key (not a 5-minute boundary): {printable(key)}")
    return BucketId(market, symbol, bucket)


class CorruptObject(BadInput):
    """A landing object whose bytes do not match the checksum that vouches for them."""


class ConcurrentWrite(Failed):
    """Another writer changed a bucket object between this writer's read and its write."""


class DeleteFailed(Failed):
    """Landing refused to delete some keys; `errors` holds S3's per-key answer (Key, Code,
    Message) for each."""

    SHOWN = 5

    def __init__(self, bucket: str, errors: list[dict]):
        self.errors = errors
        codes = sorted({e.get("Code", "?") for e in errors})
        shown = "; ".join(f"s3://{bucket}/{printable(e.get('Key', '?'))}: {e.get('Code', '?')}"
                          f" ({e.get('Message', '')})" for e in errors[:self.SHOWN])
        more = f"; and {len(errors) - self.SHOWN} more" if len(errors) > self.SHOWN else ""
        why = (" — the role needs s3:DeleteObject on them" if "AccessDenied" in codes else
               " — S3 kept failing them after retries" if set(codes) <= TRANSIENT_DELETE
               else "")
        super().__init__(f"landing refused to delete {len(errors)} key(s) ({', '.join(codes)}): "
                         f"{shown}{more}{why} (nothing else was lost: the keys are still "
                         "there)")


# Per-key DeleteObjects errors that a later try may not get (S3 throttling, an internal error).
TRANSIENT_DELETE = frozenset({"InternalError", "SlowDown", "ServiceUnavailable",
                              "RequestTimeout"})
DELETE_ATTEMPTS = 4


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Landed:
    """One object as read: its rows, the SHA-256 of its bytes, its size and S3 metadata.
    Unpacks as (table, sha256, metadata)."""

    table: pa.Table
    sha256: str
    size: int
    metadata: dict
    etag: str | None = None
    data: bytes | None = None  # the bytes, when read without parsing them

    def __iter__(self):
        return iter((self.table, self.sha256, self.metadata))

    def __getitem__(self, i: int):
        return (self.table, self.sha256, self.metadata)[i]


@dataclass(frozen=True)
class Stored:
    """An object as a listing shows it: size and ETag, nothing read."""

    size: int
    etag: str | None
    modified: datetime | None = None  # LastModified


@dataclass(frozen=True)
class BucketWrite:
    """What `Landing.merge_into` did to one bucket object."""

    key: str
    merge: Merge  # merge.table is None after a streamed merge (`bounded`): see stats, rows
    before: str | None  # SHA-256 of the object before (None: there was none)
    sha256: str  # of the object now
    size: int
    written: bool  # False: the incoming rows were all there already
    etag: str | None = None  # of the object now, as the store reports it
    moved_from: str | None = None  # the old-layout key it replaces (delete once registered)
    stats: dict | None = None  # bucket_stats of the object now (a streamed merge's)
    rows: int | None = None  # rows of the object now (a streamed merge's)

    @property
    def row_count(self) -> int:
        return self.rows if self.rows is not None else self.merge.table.num_rows

    def bucket_stats(self) -> dict:
        from workers.landing.rows import bucket_stats

        return self.stats if self.stats is not None else bucket_stats(self.merge.table)


class Landing:
    def __init__(self, s3, bucket: str, *, conditional_writes: bool = True):
        self.s3 = s3
        self.bucket = bucket
        self.conditional_writes = conditional_writes
        self._listed: dict[str, set[str]] = {}

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_of(self, uri: str) -> str:
        """The key of an s3:// URI in this bucket; Failed when it names another bucket."""
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            raise Failed(f"{uri}: not in the landing bucket {self.bucket}")
        return uri.removeprefix(prefix)

    def keys(self, prefix: str, suffix: str = ".parquet") -> list[str]:
        """Every key under `prefix` ending in `suffix`, sorted (the one paginator)."""
        out: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
        return sorted(out)

    def listing(self, prefix: str) -> list[dict]:
        """Key, LastModified and Size of every object under `prefix` (for replay windows)."""
        out: list[dict] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix):
            out += page.get("Contents", [])
        return out

    def prefixes(self, prefix: str, limit: int) -> list[str]:
        """Up to `limit` folders ("…/") directly under `prefix`, sorted (one LIST request)."""
        r = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, Delimiter="/",
                                    MaxKeys=limit)
        return sorted(p["Prefix"] for p in r.get("CommonPrefixes", []))[:limit]

    def any_under(self, prefix: str) -> bool:
        """Whether any object's key starts with `prefix` (one LIST request)."""
        r = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        return bool(r.get("Contents"))

    def exists(self, key: str) -> bool:
        """One LIST per day prefix, cached: which bucket objects are already there."""
        prefix = key.rsplit("/", 1)[0] + "/"
        if prefix not in self._listed:
            self._listed[prefix] = set(self.keys(prefix, suffix=""))
        return key in self._listed[prefix]

    def read(self, key: str, expected: str | None = None, *, parse: bool = True) -> Landed:
        """The object as stored; with `expected` (a SHA-256), CorruptObject unless its bytes
        have it — checked before they are parsed. Bytes that are not Parquet: CorruptObject.
        parse=False leaves the rows unread (`table` None, `data` the bytes)."""
        obj = self.s3.get_object(Bucket=self.bucket, Key=key)
        data = obj["Body"].read()
        digest = sha256(data)
        if expected is not None and digest != expected:
            raise CorruptObject(f"{self.uri(key)}: SHA-256 mismatch: expected {expected}, "
                                f"object is {digest}")
        return Landed(self._parse(key, data, digest) if parse else None, digest, len(data),
                      obj.get("Metadata", {}), obj.get("ETag"), None if parse else data)

    def _parse(self, key: str, data: bytes, digest: str) -> pa.Table:
        # One object is small; Arrow's thread pool buys nothing here and its threads were seen
        # to abort the process at exit (apache/arrow#34314).
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return conform(pq.read_table(io.BytesIO(data), use_threads=False))
        except (pa.ArrowException, OSError) as e:
            raise CorruptObject(f"{self.uri(key)}: not a readable Parquet object "
                                f"(SHA-256 {digest}): {e}") from None

    def sha256_of(self, key: str) -> str:
        """The SHA-256 of the object's bytes, whatever they are (nothing parsed)."""
        return sha256(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def read_verified(self, key: str, expected: str | None = None, *,
                      parse: bool = True) -> Landed:
        """The object, its SHA-256 checked against `expected` (the registry's) or, when there
        is none, against the checksum stored with the object; CorruptObject when it differs."""
        if expected is not None:  # checked before parsing: garbage is named
            return self.read(key, expected, parse=parse)
        obj = self.read(key, parse=False)
        want = obj.metadata.get("sha256")
        if want != obj.sha256:
            raise CorruptObject(f"{self.uri(key)}: SHA-256 mismatch: stored {want}, "
                                f"object is {obj.sha256}")
        if not parse:
            return obj
        return Landed(self._parse(key, obj.data, obj.sha256), obj.sha256, obj.size, obj.metadata,
                      obj.etag)

    def read_if_exists(self, key: str, *, parse: bool = True) -> Landed | None:
        try:
            return self.read_verified(key, parse=parse)
        except self.s3.exceptions.NoSuchKey:
            return None

    def write(self, key: str, table: pa.Table, symbol: str, *, market: str = "spot",
              if_match: str | None = None, if_absent: bool = False) -> tuple[str, int, str]:
        """Put one object; (sha256, size, etag). `if_match` (an ETag) / `if_absent` make the
        put conditional: it fails with ConcurrentWrite when someone else wrote the key since."""
        from workers.landing.parquet import to_parquet

        return self.put(key, to_parquet(table.cast(tick_schema())), table.num_rows, symbol,
                        market=market, if_match=if_match, if_absent=if_absent)

    def put(self, key: str, data: bytes, rows: int, symbol: str, *, market: str = "spot",
            if_match: str | None = None, if_absent: bool = False) -> tuple[str, int, str]:
        """`write` of bytes already made (workers/landing/parquet.py)."""
        digest = sha256(data)
        cond = {}
        if self.conditional_writes and if_match:
            cond["IfMatch"] = if_match
        elif self.conditional_writes and if_absent:
            cond["IfNoneMatch"] = "*"
        try:
            r = self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=data,
                ContentType="application/vnd.apache.parquet",
                Metadata={"sha256": digest, "rows": str(rows), "symbol": symbol,
                          "market": market, "schema-version": str(SCHEMA_VERSION),
                          "producer": PRODUCER}, **cond)
        except self.s3.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ConcurrentWrite(f"{self.uri(key)} was written by someone else while this "
                                      "writer merged into it; nothing of this write was "
                                      "stored — run again") from None
            if cond and code in ("NotImplemented", "InvalidArgument"):
                # A store without conditional writes: the bucket lock alone serialises.
                self.conditional_writes = False
                return self.put(key, data, rows, symbol, market=market)
            raise
        self._listed.setdefault(key.rsplit("/", 1)[0] + "/", set()).add(key)
        return digest, len(data), r.get("ETag")

    def merge_into(self, market: str, symbol: str, bucket_us: int, incoming: pa.Table, *,
                   current_key: str | None = None, trust_listing: bool = True,
                   bounded: bool = False) -> BucketWrite:
        """Read-merge-write of one bucket object: the union deduplicated on trade id (what is
        there first wins), written only when something is new. The only writer of raw/; call
        it holding the bucket's lock (workers/db/bucket_locks.py).

        `current_key`: where the registry says the bucket's object is (an old-layout key is
        read from there, written to the new key, and reported in `moved_from`).
        `trust_listing`: take "no object yet" from this instance's cached day listing (one LIST
        per day for a file); False asks S3 for the key itself (a long-running stream).
        `bounded`: an object of more than one row group is merged a row group at a time
        (workers/landing/bounded.py): memory follows the incoming rows, not the bucket; the
        result has no `merge.table` (`stats` and `rows` say what the object holds)."""
        import pyarrow.parquet as pq

        from workers.landing.bounded import merge_stream
        from workers.landing.parquet import ROW_GROUP
        from workers.landing.rows import merge

        key = object_key(market, symbol, bucket_us)
        source = current_key or key
        existing = None
        if source != key or self.exists(key) or not trust_listing:
            existing = self.read_if_exists(source, parse=False)
        moved = source if source != key and existing is not None else None
        if bounded and existing is not None and pq.ParquetFile(
                io.BytesIO(existing.data)).metadata.num_rows > ROW_GROUP:
            streamed = merge_stream(existing.data, incoming)
            if streamed is not None:
                return self._write_streamed(key, symbol, market, existing, moved, streamed)
        if existing is not None:  # rows of the object, in memory
            existing = Landed(conform(pq.read_table(io.BytesIO(existing.data),
                                                    use_threads=False)), existing.sha256,
                              existing.size, existing.metadata, existing.etag)
        m = merge(existing.table if existing else None, incoming)
        if existing is not None and not m.new_rows.num_rows and moved is None:
            return BucketWrite(key, m, existing.sha256, existing.sha256, existing.size, False,
                               existing.etag)
        digest, size, etag = self.write(
            key, m.table, symbol, market=market,
            if_match=existing.etag if existing is not None and moved is None else None,
            if_absent=existing is None or moved is not None)
        return BucketWrite(key, m, existing.sha256 if existing else None, digest, size, True,
                           etag, moved)

    def _write_streamed(self, key: str, symbol: str, market: str, existing: Landed,
                        moved: str | None, st) -> BucketWrite:
        from workers.landing.rows import Merge

        m = Merge(None, st.new_rows, st.duplicates, st.conflicts, st.existing_duplicate_ids)
        if not st.new_rows.num_rows and moved is None:
            return BucketWrite(key, m, existing.sha256, existing.sha256, existing.size, False,
                               existing.etag, stats=st.stats, rows=st.rows)
        digest, size, etag = self.put(key, st.data, st.rows, symbol, market=market,
                                      if_match=existing.etag if moved is None else None,
                                      if_absent=moved is not None)
        return BucketWrite(key, m, existing.sha256, digest, size, True, etag, moved,
                           stats=st.stats, rows=st.rows)

    def etags(self, prefix: str, first: str | None = None, last: str | None = None
              ) -> dict[str, str]:
        """{key: ETag} of the objects under `prefix` now (from first to last key, when given:
        a flush's buckets are a few consecutive keys of a day's 288): checks that what was
        registered is what is stored."""
        small = first is not None and last is not None  # a few keys: stop soon after last
        return {k: o.etag for k, o in self.stored(prefix, first, last,
                                                  page_size=64 if small else None).items()}

    def stored(self, prefix: str, first: str | None = None, last: str | None = None, *,
               page_size: int | None = None) -> dict[str, Stored]:
        """{key: size and ETag} of the objects under `prefix` now, from `first` to `last` key
        when given: one LIST per 1,000 keys (or `page_size`), nothing read."""
        kw: dict = {}
        if first is not None:  # ".../0005" sorts after ".../0000.parquet", before first itself
            kw["StartAfter"] = first.removesuffix(".parquet")
        if page_size is not None:
            kw["PaginationConfig"] = {"PageSize": page_size}
        out: dict[str, Stored] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, **kw):
            for o in page.get("Contents", []):
                if last is not None and o["Key"] > last:
                    return out
                out[o["Key"]] = Stored(o["Size"], o.get("ETag"), o.get("LastModified"))
        return out

    def delete(self, keys: list[str]) -> None:
        """Delete these keys (1,000 per request). DeleteObjects answers 200 even when it deleted
        nothing: each key's failure (AccessDenied from a policy, an object lock, …) comes back
        in the body's Errors, so every batch is checked; DeleteFailed names the keys and codes
        once every batch was tried."""
        failed: list[dict] = []
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            for attempt in range(DELETE_ATTEMPTS):  # keys that failed transiently, again
                r = self.s3.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in batch], "Quiet": True})
                errors = r.get("Errors", [])
                retry = [e for e in errors if e.get("Code") in TRANSIENT_DELETE]
                failed += [e for e in errors if e not in retry]
                if not retry or attempt == DELETE_ATTEMPTS - 1:
                    failed += retry
                    break
                batch = [e["Key"] for e in retry]
                time.sleep(0.2 * 2 ** attempt)
        if failed:
            raise DeleteFailed(self.bucket, failed)

    def write_quarantine(self, market: str, symbol: str, source: str, run_id: str,
                         rows: list[dict]) -> str:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in source)[-120:]
        key = f"quarantine/{market}/{symbol}/{safe}/{run_id}.jsonl"
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body,
                           ContentType="application/x-ndjson")
        return self.uri(key)
