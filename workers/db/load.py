"""Loading landed buckets into a database: ticks, the registry, the 5-minute aggregate, offsets.

One transaction per flush, so ticks, their registry rows, aggregates and the offset that covers
them commit together: a crash leaves either all of a flush or none of it.

Buckets the registry does not know yet cannot hold ticks (ticks and registry rows commit
together), so their rows are COPYed straight into `btc_ticks`; known buckets go through a
staging table and `INSERT … ON CONFLICT DO NOTHING`. COPY sends PostgreSQL's binary format
(workers/db/copy_binary.py: the server converts no text); what that layout cannot carry goes as
CSV rendered by Arrow's C++ writer, the format `psql \\copy` sends.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from workers.core.markets import BucketId
from workers.core.pg import set_local_utc
from workers.core.sqlfiles import query, template
from workers.core.ticks import BUCKET_US, SCHEMA_VERSION, to_dt, to_us
from workers.db import copy_binary
from workers.landing.store import PRODUCER

TICK_COLUMNS = ("bucket_5m", "market", "symbol", "trade_id", "event_time", "price", "quantity",
                "quote_quantity", "is_buyer_maker", "trade_kind")
Series = tuple[str, str]  # (market, symbol)


@dataclass
class BucketLoad:
    market: str
    symbol: str
    bucket_us: int
    rows: pa.Table  # rows to insert (all of a new bucket, the new rows of a known one)
    known: bool  # the registry already has this bucket
    uri: str
    sha256: str
    size: int
    stats: dict  # from landing.bucket_stats over the bucket's full content
    etag: str | None = None  # the object's ETag as the store reported it, when known

    def metadata(self) -> dict:
        """The registry row's metadata: checksum, rows, ids; the ETag lets a restore tell
        from one listing which objects changed since they were registered."""
        m = {"sha256": self.sha256, "row_count": self.stats["trade_count"],
             "schema_version": SCHEMA_VERSION, "producer": PRODUCER,
             "first_trade_id": self.stats["first_trade_id"],
             "last_trade_id": self.stats["last_trade_id"]}
        if self.etag:
            m["etag"] = self.etag
        return m

    @property
    def series(self) -> Series:
        return self.market, self.symbol


def known_buckets(conn: psycopg.Connection, market: str, symbol: str, buckets: list[int]
                  ) -> dict[int, str]:
    """bucket (µs) -> registered sha256, for the given buckets of one market's symbol."""
    if not buckets:
        return {}
    rows = conn.execute(query(__package__, "known_buckets"),
                        [market, symbol, [to_dt(b) for b in buckets]]).fetchall()
    return {to_us(r[0]): r[1] for r in rows}


def _csv(market: str, symbol: str, tables: list[pa.Table]) -> bytes:
    t = pa.concat_tables(tables)
    us = pc.cast(t.column("event_time"), pa.int64())
    bucket = pc.multiply(pc.divide(us, BUCKET_US), BUCKET_US)  # floor: times are positive
    # Naive UTC timestamps (the transaction sets TimeZone to UTC): formatting with a zone
    # costs Arrow ten times more.
    kind = (t.column("trade_kind") if "trade_kind" in t.column_names
            else pa.nulls(t.num_rows, pa.string()))
    out = pa.table({
        "bucket_5m": pc.cast(bucket, pa.timestamp("us")),
        "market": pa.array([market] * t.num_rows, pa.string()),
        "symbol": pa.array([symbol] * t.num_rows, pa.string()),
        "trade_id": t.column("trade_id"),
        "event_time": pc.cast(us, pa.timestamp("us")),
        "price": t.column("price"),
        "quantity": t.column("quantity"),
        "quote_quantity": t.column("quote_quantity"),
        "is_buyer_maker": t.column("is_buyer_maker"),
        "trade_kind": kind,
    })
    buf = io.BytesIO()
    pacsv.write_csv(out, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return buf.getvalue()


def _columns() -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, TICK_COLUMNS))


def _copy_into(statement: sql.SQL, table: str) -> sql.Composed:
    """A COPY of the tick columns into `table` ("schema.table" or a temporary table)."""
    return statement.format(table=sql.Identifier(*table.split(".")), cols=_columns())


def _copy(cur: psycopg.Cursor, table: str, data: bytes) -> None:
    with cur.copy(_copy_into(template(__package__, "copy_ticks_csv"), table)) as cp:
        view = memoryview(data)
        for i in range(0, len(view), 1 << 20):
            cp.write(view[i:i + (1 << 20)])


def copy_rows(cur: psycopg.Cursor, table: str, series: Series, tables: list[pa.Table]) -> None:
    """COPY one series' rows into `table`: binary when the layout can carry every table (each
    is encoded as it is sent, so only one table's tuples exist at a time), else CSV. Call
    inside a transaction with TimeZone UTC."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return
    if not all(copy_binary.encodable(t) for t in tables):
        _copy(cur, table, _csv(*series, tables))
        return
    with cur.copy(_copy_into(template(__package__, "copy_ticks_binary"), table)) as cp:
        cp.write(copy_binary.HEADER)
        for t in tables:
            for i in range(0, t.num_rows, 8192):
                cp.write(copy_binary.rows(*series, t.slice(i, 8192)))
        cp.write(copy_binary.TRAILER)


def insert_ticks(cur: psycopg.Cursor, groups: list[tuple[Series, list[pa.Table]]]) -> int:
    """Ticks that may already be stored: through a staging table and ON CONFLICT DO NOTHING.
    Call inside a transaction with TimeZone UTC; returns the number inserted."""
    cur.execute(query(__package__, "create_ticks_stage"))
    staged = 0
    for series, tables in groups:
        if any(t.num_rows for t in tables):
            copy_rows(cur, "ticks_stage", series, tables)
            staged += 1
    if not staged:
        return 0
    cur.execute(template(__package__, "insert_staged_ticks").format(cols=_columns()))
    return cur.rowcount


def mark_digests_stale(cur: psycopg.Cursor | psycopg.Connection,
                       buckets: list[tuple[str, str, int]]) -> None:
    """Every writer of ticks calls this in the transaction that writes them: the buckets'
    digests become stale (recomputed by `replicate`), and the statement trigger on btc_ticks
    knows the change is accounted for (sql/017)."""
    cur.execute(query(__package__, "digests_marked"))
    keys = sorted(set(buckets))
    if keys:
        cur.execute(query(__package__, "mark_digests_stale"),
                    [[m for m, _, _ in keys], [s for _, s, _ in keys],
                     [to_dt(b) for _, _, b in keys]])


def buckets_of(market: str, symbol: str, table: pa.Table) -> list[BucketId]:
    """The buckets a table of ticks falls into."""
    us = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    return [BucketId(market, symbol, int(b)) for b in np.unique(us - us % BUCKET_US)]


def load(conn: psycopg.Connection, loads: list[BucketLoad], *, source: str) -> int:
    """Apply one flush in one transaction; returns the number of ticks inserted."""
    inserted = 0
    with conn.transaction(), conn.cursor() as cur:
        set_local_utc(cur)
        mark_digests_stale(cur, [(b.market, b.symbol, b.bucket_us) for b in loads
                                 if b.rows.num_rows])
        # The live stream commits ticks of a bucket before the bucket is registered (it is
        # registered when it closes): an unregistered bucket that already holds ticks goes
        # through ON CONFLICT like a known one.
        holding = _holding_ticks(cur, [b for b in loads if not b.known and b.rows.num_rows])
        new = [b for b in loads if not b.known and b.rows.num_rows
               and (*b.series, b.bucket_us) not in holding]
        old = [b for b in loads if b.rows.num_rows and (b.known or (*b.series, b.bucket_us)
                                                         in holding)]
        for group in _by_series(new):
            copy_rows(cur, "market_data.btc_ticks", group[0].series, [b.rows for b in group])
            inserted += sum(b.rows.num_rows for b in group)
        if old:
            inserted += insert_ticks(cur, [(g[0].series, [b.rows for b in g])
                                           for g in _by_series(old)])
        cur.executemany(
            query(__package__, "upsert_registry"),
            [(b.market, b.symbol, to_dt(b.bucket_us), b.uri, b.size, b.stats["span"][0],
              b.stats["span"][1], json.dumps(b.metadata())) for b in loads],
        )
        # A bucket of flagged trades only (insurance fund, ADL) has no market price.
        aggregate = [b for b in loads if b.stats["ohlcv"] is not None]
        cur.executemany(
            query(__package__, "upsert_ohlcv"),
            [(b.market, b.symbol, to_dt(b.bucket_us), s["open"], s["high"], s["low"],
              s["close"], s["volume"], s["quote_volume"], s["trade_count"], s["buy_volume"],
              s["first_trade_id"], s["last_trade_id"]) for b in aggregate
             for s in [b.stats["ohlcv"]]],
        )
        for (market, symbol), last_id, last_time in _offsets(loads):
            advance_offset(cur, source, market, symbol, last_id, last_time)
    return inserted


def advance_offset(cur: psycopg.Cursor | psycopg.Connection, source: str, market: str,
                   symbol: str, last_trade_id: int, last_event_time: datetime) -> None:
    cur.execute(query(__package__, "advance_offset"),
                [source, market, symbol, last_trade_id, last_event_time])


def _holding_ticks(cur: psycopg.Cursor, loads: list[BucketLoad]) -> set[tuple[str, str, int]]:
    out: set[tuple[str, str, int]] = set()
    for group in _by_series(loads):
        market, symbol = group[0].series
        rows = cur.execute(query(__package__, "buckets_holding_ticks"),
                           [[to_dt(b.bucket_us) for b in group], market, symbol]).fetchall()
        out.update((market, symbol, to_us(r[0])) for r in rows)
    return out


def _by_series(loads: list[BucketLoad]) -> list[list[BucketLoad]]:
    groups: dict[Series, list[BucketLoad]] = {}
    for b in loads:
        groups.setdefault(b.series, []).append(b)
    return list(groups.values())


def _offsets(loads: list[BucketLoad]):
    best: dict[Series, tuple[int, datetime]] = {}
    for b in loads:
        last = b.stats["last_trade_id"]
        if b.series not in best or last > best[b.series][0]:
            best[b.series] = (last, b.stats["span"][1])
    return [(s, i, t) for s, (i, t) in best.items()]
