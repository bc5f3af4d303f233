"""Loading landed buckets into a database: ticks, the registry, the 5-minute aggregate, offsets.

One transaction per flush, so ticks, their registry rows, aggregates and the offset that covers
them commit together: a crash leaves either all of a flush or none of it.

Buckets the registry does not know yet cannot hold ticks (ticks and registry rows commit
together), so their rows are COPYed straight into `btc_ticks`; known buckets go through a
staging table and `INSERT … ON CONFLICT DO NOTHING`. COPY uses CSV rendered by Arrow's C++
writer: the server parses the same format `psql \\copy` sends.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from workers.core.sqlfiles import query
from workers.core.ticks import BUCKET_US, SCHEMA_VERSION, to_dt, to_us
from workers.landing.store import PRODUCER

TICK_COLUMNS = ("bucket_5m", "symbol", "trade_id", "event_time", "price", "quantity",
                "quote_quantity", "is_buyer_maker")


@dataclass
class BucketLoad:
    symbol: str
    bucket_us: int
    rows: pa.Table  # rows to insert (all of a new bucket, the new rows of a known one)
    known: bool  # the registry already has this bucket
    uri: str
    sha256: str
    size: int
    stats: dict  # from landing.bucket_stats over the bucket's full content


def known_buckets(conn: psycopg.Connection, symbol: str, buckets: list[int]) -> dict[int, str]:
    """bucket (µs) -> registered sha256, for the given buckets."""
    if not buckets:
        return {}
    rows = conn.execute(query(__package__, "known_buckets"),
                        [symbol, [to_dt(b) for b in buckets]]).fetchall()
    return {to_us(r[0]): r[1] for r in rows}


def _csv(symbol: str, tables: list[pa.Table]) -> bytes:
    t = pa.concat_tables(tables)
    us = pc.cast(t.column("event_time"), pa.int64())
    bucket = pc.multiply(pc.divide(us, BUCKET_US), BUCKET_US)  # floor: times are positive
    # Naive UTC timestamps (the transaction sets TimeZone to UTC): formatting with a zone
    # costs Arrow ten times more.
    out = pa.table({
        "bucket_5m": pc.cast(bucket, pa.timestamp("us")),
        "symbol": pa.array([symbol] * t.num_rows, pa.string()),
        "trade_id": t.column("trade_id"),
        "event_time": pc.cast(us, pa.timestamp("us")),
        "price": t.column("price"),
        "quantity": t.column("quantity"),
        "quote_quantity": t.column("quote_quantity"),
        "is_buyer_maker": t.column("is_buyer_maker"),
    })
    buf = io.BytesIO()
    pacsv.write_csv(out, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return buf.getvalue()


def _copy(cur: psycopg.Cursor, table: str, data: bytes) -> None:
    cols = ", ".join(TICK_COLUMNS)
    with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT csv)") as cp:
        view = memoryview(data)
        for i in range(0, len(view), 1 << 20):
            cp.write(view[i:i + (1 << 20)])


def insert_ticks(cur: psycopg.Cursor, groups: list[tuple[str, list[pa.Table]]]) -> int:
    """Ticks that may already be stored: through a staging table and ON CONFLICT DO NOTHING.
    Call inside a transaction with TimeZone UTC; returns the number inserted."""
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS ticks_stage "
                "(LIKE market_data.btc_ticks INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    staged = 0
    for symbol, tables in groups:
        if any(t.num_rows for t in tables):
            _copy(cur, "ticks_stage", _csv(symbol, tables))
            staged += 1
    if not staged:
        return 0
    cur.execute("INSERT INTO market_data.btc_ticks SELECT * FROM ticks_stage "
                "ON CONFLICT (bucket_5m, symbol, trade_id) DO NOTHING")
    return cur.rowcount


def load(conn: psycopg.Connection, loads: list[BucketLoad], *, source: str) -> int:
    """Apply one flush in one transaction; returns the number of ticks inserted."""
    inserted = 0
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        # The live stream commits ticks of a bucket before the bucket is registered (it is
        # registered when it closes): an unregistered bucket that already holds ticks goes
        # through ON CONFLICT like a known one.
        holding = _holding_ticks(cur, [b for b in loads if not b.known and b.rows.num_rows])
        new = [b for b in loads if not b.known and b.rows.num_rows
               and (b.symbol, b.bucket_us) not in holding]
        old = [b for b in loads if b.rows.num_rows and (b.known or (b.symbol, b.bucket_us)
                                                         in holding)]
        for group in _by_symbol(new):
            _copy(cur, "market_data.btc_ticks", _csv(group[0].symbol, [b.rows for b in group]))
            inserted += sum(b.rows.num_rows for b in group)
        if old:
            inserted += insert_ticks(cur, [(g[0].symbol, [b.rows for b in g])
                                           for g in _by_symbol(old)])
        cur.executemany(
            query(__package__, "upsert_registry"),
            [(b.symbol, to_dt(b.bucket_us), b.uri, b.size, b.stats["span"][0], b.stats["span"][1],
              json.dumps({"sha256": b.sha256, "row_count": b.stats["trade_count"],
                          "schema_version": SCHEMA_VERSION, "producer": PRODUCER,
                          "first_trade_id": b.stats["first_trade_id"],
                          "last_trade_id": b.stats["last_trade_id"]}))
             for b in loads],
        )
        cur.executemany(
            query(__package__, "upsert_ohlcv"),
            [(b.symbol, to_dt(b.bucket_us), s["open"], s["high"], s["low"], s["close"], s["volume"],
              s["quote_volume"], s["trade_count"], s["buy_volume"], s["first_trade_id"],
              s["last_trade_id"]) for b in loads for s in [b.stats]],
        )
        for symbol, last_id, last_time in _offsets(loads):
            advance_offset(cur, source, symbol, last_id, last_time)
    return inserted


def advance_offset(cur: psycopg.Cursor | psycopg.Connection, source: str, symbol: str,
                   last_trade_id: int, last_event_time: datetime) -> None:
    cur.execute(query(__package__, "advance_offset"),
                [source, symbol, last_trade_id, last_event_time])


def _holding_ticks(cur: psycopg.Cursor, loads: list[BucketLoad]) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for group in _by_symbol(loads):
        rows = cur.execute(query(__package__, "buckets_holding_ticks"),
                           [[to_dt(b.bucket_us) for b in group], group[0].symbol]).fetchall()
        out.update((group[0].symbol, to_us(r[0])) for r in rows)
    return out


def _by_symbol(loads: list[BucketLoad]) -> list[list[BucketLoad]]:
    groups: dict[str, list[BucketLoad]] = {}
    for b in loads:
        groups.setdefault(b.symbol, []).append(b)
    return list(groups.values())


def _offsets(loads: list[BucketLoad]):
    best: dict[str, tuple[int, datetime]] = {}
    for b in loads:
        last = b.stats["last_trade_id"]
        if b.symbol not in best or last > best[b.symbol][0]:
            best[b.symbol] = (last, b.stats["span"][1])
    return [(s, i, t) for s, (i, t) in best.items()]
