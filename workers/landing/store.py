"""The S3 landing bucket: one Parquet object per (symbol, 5-minute bucket), merged on overlap.

Landing is the source of truth: everything downstream can be rebuilt from these objects. The
bucket is versioned, so a merge that rewrites an object keeps the previous version. This module
owns the bucket: its keys, listing, reads verified against a checksum, and the read-merge-write
of a bucket object (`Landing.merge_into`), which every writer (file ingest, stream compaction)
goes through.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.core.errors import BadInput, Failed
from workers.core.ticks import BUCKET_US, SCHEMA_VERSION, TICK_SCHEMA, to_dt, to_us

PRODUCER = "tickstack-ingest"


RAW = "raw/"


def object_key(symbol: str, bucket_us: int) -> str:
    t = to_dt(bucket_us)
    return f"{RAW}{symbol}/{t:%Y-%m-%d}/{t:%H%M}.parquet"


def bucket_of_key(key: str) -> tuple[str, int]:
    """(symbol, bucket µs) of `raw/<SYMBOL>/<YYYY-MM-DD>/<HHMM>.parquet`; ValueError otherwise."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != RAW.rstrip("/") or not parts[3].endswith(".parquet"):
        raise ValueError(f"not a landing object key (raw/<SYMBOL>/<date>/<HHMM>.parquet): {key}")
    _, symbol, day, name = parts
    t = datetime.strptime(f"{day} {name.removesuffix('.parquet')}", "%Y-%m-%d %H%M")
    return symbol, to_us(t)


class CorruptObject(BadInput):
    """A landing object whose bytes do not match the checksum that vouches for them."""


def to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    # Same rows -> same bytes: the SHA-256 identifies content, so an unchanged merge is a no-op.
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Merge:
    table: pa.Table  # the bucket's full content, sorted by trade id
    new_rows: pa.Table  # rows of `incoming` not in `existing`
    duplicates: int  # incoming rows identical to one already present
    conflicts: list[tuple[int, str]]  # (incoming position, reason): same id, other values


def merge(existing: pa.Table | None, incoming: pa.Table) -> Merge:
    """Union deduplicated on trade id; the first seen wins (existing before incoming)."""
    n_old = 0 if existing is None else existing.num_rows
    both = incoming if existing is None else pa.concat_tables([existing, incoming])
    ids = both.column("trade_id").to_numpy()
    order = np.lexsort((np.arange(len(ids)), ids))  # by id, then by arrival
    sorted_ids = ids[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    keep = order[first]
    dup_pos = order[~first]
    conflicts: list[tuple[int, str]] = []
    duplicates = 0
    if len(dup_pos):
        # The kept row for each duplicate is the nearest preceding first occurrence.
        kept_for = order[np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0))][~first]
        same = np.ones(len(dup_pos), dtype=bool)
        for col in ("event_time", "price", "quantity", "is_buyer_maker"):
            a = pc.take(both.column(col), pa.array(dup_pos))
            b = pc.take(both.column(col), pa.array(kept_for))
            same &= np.asarray(pc.equal(a, b).to_numpy(zero_copy_only=False), dtype=bool)
        for p, s in zip(dup_pos, same, strict=True):
            if p < n_old:
                continue  # duplicates inside an existing object were resolved when it landed
            if s:
                duplicates += 1
            else:
                conflicts.append((int(p - n_old), "conflicting duplicate trade id "
                                  "(same id, different values)"))
    keep.sort()
    table = both.take(pa.array(keep)).sort_by("trade_id")
    new_mask = keep >= n_old
    new_rows = both.take(pa.array(keep[new_mask]))
    return Merge(table, new_rows, duplicates, conflicts)


def split_by_bucket(table: pa.Table, positions: np.ndarray
                    ) -> dict[int, tuple[pa.Table, np.ndarray]]:
    """{bucket µs: (its rows, their positions)} of ticks in any order."""
    us = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    b = us - us % BUCKET_US
    out: dict[int, tuple[pa.Table, np.ndarray]] = {}
    for bucket in np.unique(b):
        idx = np.flatnonzero(b == bucket)
        out[int(bucket)] = (table.take(pa.array(idx)), positions[idx])
    return out


def bucket_stats(table: pa.Table) -> dict:
    """OHLCV of one bucket's full content (sorted by trade id, which follows time)."""
    price = table.column("price")
    qty = table.column("quantity")
    mm = pc.min_max(price)
    taker_buy = pc.filter(qty, pc.invert(table.column("is_buyer_maker")))
    t = table.column("event_time")
    order = pc.sort_indices(table, sort_keys=[("event_time", "ascending"),
                                              ("trade_id", "ascending")])
    return {
        "open": price[order[0].as_py()].as_py(),
        "close": price[order[-1].as_py()].as_py(),
        "high": mm["max"].as_py(),
        "low": mm["min"].as_py(),
        "volume": pc.sum(qty).as_py(),
        "quote_volume": pc.sum(table.column("quote_quantity")).as_py(),
        "trade_count": table.num_rows,
        "buy_volume": (pc.sum(taker_buy).as_py() if len(taker_buy) else 0),
        "first_trade_id": pc.min(table.column("trade_id")).as_py(),
        "last_trade_id": pc.max(table.column("trade_id")).as_py(),
        "span": (pc.min(t).as_py(), pc.max(t).as_py()),
    }


@dataclass(frozen=True)
class Landed:
    """One object as read: its rows, the SHA-256 of its bytes, its size and S3 metadata.
    Unpacks as (table, sha256, metadata)."""

    table: pa.Table
    sha256: str
    size: int
    metadata: dict

    def __iter__(self):
        return iter((self.table, self.sha256, self.metadata))

    def __getitem__(self, i: int):
        return (self.table, self.sha256, self.metadata)[i]


@dataclass(frozen=True)
class BucketWrite:
    """What `Landing.merge_into` did to one bucket object."""

    key: str
    merge: Merge
    before: str | None  # SHA-256 of the object before (None: there was none)
    sha256: str  # of the object now
    size: int
    written: bool  # False: the incoming rows were all there already


class Landing:
    def __init__(self, s3, bucket: str):
        self.s3 = s3
        self.bucket = bucket
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

    def exists(self, key: str) -> bool:
        """One LIST per day prefix, cached: which bucket objects are already there."""
        prefix = key.rsplit("/", 1)[0] + "/"
        if prefix not in self._listed:
            self._listed[prefix] = set(self.keys(prefix, suffix=""))
        return key in self._listed[prefix]

    def read(self, key: str) -> Landed:
        """The object as stored, unverified (`read_verified` checks it)."""
        obj = self.s3.get_object(Bucket=self.bucket, Key=key)
        data = obj["Body"].read()
        # One object is small; Arrow's thread pool buys nothing here and its threads were seen
        # to abort the process at exit (apache/arrow#34314).
        table = pq.read_table(io.BytesIO(data), use_threads=False).cast(TICK_SCHEMA)
        return Landed(table, sha256(data), len(data), obj.get("Metadata", {}))

    def read_verified(self, key: str, expected: str | None = None) -> Landed:
        """The object, its SHA-256 checked against `expected` (the registry's) or, when there
        is none, against the checksum stored with the object; CorruptObject when it differs."""
        obj = self.read(key)
        want = expected or obj.metadata.get("sha256")
        if want != obj.sha256:
            source = "expected" if expected else "stored"
            raise CorruptObject(f"{self.uri(key)}: SHA-256 mismatch: {source} {want}, "
                                f"object is {obj.sha256}")
        return obj

    def write(self, key: str, table: pa.Table, symbol: str) -> tuple[str, int]:
        data = to_parquet(table)
        digest = sha256(data)
        self.s3.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType="application/vnd.apache.parquet",
            Metadata={"sha256": digest, "rows": str(table.num_rows), "symbol": symbol,
                      "schema-version": str(SCHEMA_VERSION), "producer": PRODUCER},
        )
        self._listed.setdefault(key.rsplit("/", 1)[0] + "/", set()).add(key)
        return digest, len(data)

    def merge_into(self, symbol: str, bucket_us: int, incoming: pa.Table, *,
                   trust_listing: bool = True) -> BucketWrite:
        """Read-merge-write of one bucket object: the union deduplicated on trade id (what is
        there first wins), written only when something is new. The only writer of raw/.

        `trust_listing`: take "no object yet" from this instance's cached day listing (one LIST
        per day for a file); False asks S3 for the key itself (a long-running stream)."""
        key = object_key(symbol, bucket_us)
        existing = None
        if self.exists(key) or not trust_listing:
            try:
                existing = self.read_verified(key)
            except self.s3.exceptions.NoSuchKey:
                existing = None
        m = merge(existing.table if existing else None, incoming)
        if existing is not None and not m.new_rows.num_rows:
            return BucketWrite(key, m, existing.sha256, existing.sha256, existing.size, False)
        digest, size = self.write(key, m.table, symbol)
        return BucketWrite(key, m, existing.sha256 if existing else None, digest, size, True)

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def write_quarantine(self, symbol: str, source: str, run_id: str,
                         rows: list[dict]) -> str:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in source)[-120:]
        key = f"quarantine/{symbol}/{safe}/{run_id}.jsonl"
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body,
                           ContentType="application/x-ndjson")
        return self.uri(key)
