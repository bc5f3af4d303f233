"""The S3 landing bucket: one Parquet object per (symbol, 5-minute bucket), merged on overlap.

Landing is the source of truth: everything downstream can be rebuilt from these objects. The
bucket is versioned, so a merge that rewrites an object keeps the previous version.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.core.ticks import BUCKET_US, SCHEMA_VERSION, TICK_SCHEMA

PRODUCER = "tickstack-ingest"


def object_key(symbol: str, bucket_us: int) -> str:
    t = datetime.fromtimestamp(bucket_us / 1e6, UTC)
    return f"raw/{symbol}/{t:%Y-%m-%d}/{t:%H%M}.parquet"


def bucket_of_key(key: str) -> tuple[str, int]:
    _, symbol, day, name = key.split("/")
    t = datetime.strptime(f"{day} {name.removesuffix('.parquet')}", "%Y-%m-%d %H%M")
    return symbol, int(t.replace(tzinfo=UTC).timestamp()) * 1_000_000


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


class Landing:
    def __init__(self, s3, bucket: str):
        self.s3 = s3
        self.bucket = bucket
        self._listed: dict[str, set[str]] = {}

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def exists(self, key: str) -> bool:
        """One LIST per day prefix, cached: which bucket objects are already there."""
        prefix = key.rsplit("/", 1)[0] + "/"
        if prefix not in self._listed:
            found: set[str] = set()
            for page in self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                found.update(o["Key"] for o in page.get("Contents", []))
            self._listed[prefix] = found
        return key in self._listed[prefix]

    def read(self, key: str) -> tuple[pa.Table, str, dict]:
        obj = self.s3.get_object(Bucket=self.bucket, Key=key)
        data = obj["Body"].read()
        # One object is small; Arrow's thread pool buys nothing here and its threads were seen
        # to abort the process at exit (apache/arrow#34314).
        table = pq.read_table(io.BytesIO(data), use_threads=False).cast(TICK_SCHEMA)
        return table, sha256(data), obj.get("Metadata", {})

    def size(self, key: str) -> int:
        return self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"]

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

    def write_quarantine(self, symbol: str, source: str, run_id: str,
                         rows: list[dict]) -> str:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in source)[-120:]
        key = f"quarantine/{symbol}/{safe}/{run_id}.jsonl"
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body,
                           ContentType="application/x-ndjson")
        return self.uri(key)
