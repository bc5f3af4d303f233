"""`workers embed`: one 256-d vector per closed 5-minute window, and what followed it.

Incremental: only windows without an embedding, or whose landing object changed since (its
SHA-256 in the registry differs from the one the vector was computed from), are computed; label
keys are filled in as their horizons get data. A rerun with nothing new writes nothing.
Ticks are read column-wise (COPY … TO STDOUT parsed by Arrow) and features computed with numpy.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from pgvector.psycopg import register_vector
from psycopg import sql

from workers.core import logs
from workers.core.pg import require_autocommit
from workers.core.sqlfiles import query, template
from workers.core.ticks import to_dt, to_us
from workers.signals import features, vector_index

log = logs.get("embed")


@dataclass
class EmbedSummary:
    windows_pending: int = 0
    embedded: int = 0
    skipped_few_trades: int = 0
    labels_updated: int = 0
    index: str = ""
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.embedded or self.labels_updated)

    def summary(self) -> str:
        return (f"{self.embedded} windows embedded, {self.skipped_few_trades} skipped (too few "
                f"trades), {self.labels_updated} label snapshots updated; index: {self.index}")

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}




def read_ticks(conn: psycopg.Connection, market: str, symbol: str, buckets: list) -> pa.Table:
    """Ticks of the given buckets, sorted, as Arrow columns (one COPY, parsed in C++)."""
    buf = io.BytesIO()
    with conn.cursor() as cur:
        statement = template(__package__, "window_ticks").format(
            market=sql.Literal(market), symbol=sql.Literal(symbol),
            buckets=sql.Literal(buckets))
        with cur.copy(statement) as cp:
            for chunk in cp:
                buf.write(chunk)
    buf.seek(0)
    if buf.getbuffer().nbytes == 0:
        return pa.table({"b": pa.array([], pa.int64())})
    return pacsv.read_csv(buf, read_options=pacsv.ReadOptions(
        column_names=["b", "t", "price", "qty", "bm"]),
        convert_options=pacsv.ConvertOptions(column_types={
            "b": pa.int64(), "t": pa.int64(), "price": pa.float64(), "qty": pa.float64(),
            "bm": pa.bool_()}, true_values=["t"], false_values=["f"]))


def run(conn: psycopg.Connection, *, symbol: str | None = None, market: str | None = None,
        now=None, batch_windows: int = 2000, index_min_rows: int = vector_index.MIN_ROWS
        ) -> EmbedSummary:
    t0 = time.monotonic()
    require_autocommit(conn, "embed")
    register_vector(conn)
    s = EmbedSummary()
    series = conn.execute(query(__package__, "series_to_embed"),
                          {"m": market, "s": symbol}).fetchall()
    now = now or conn.execute(query(__package__, "transaction_now")).fetchone()[0]
    for mkt, sym in series:
        todo = conn.execute(query(__package__, "windows_to_embed"), {
            "market": mkt, "symbol": sym, "now": now,
            "version": features.FEATURE_VERSION}).fetchall()
        s.windows_pending += len(todo)
        for i in range(0, len(todo), batch_windows):
            _embed_batch(conn, mkt, sym, todo[i:i + batch_windows], s)
        s.labels_updated += _update_labels(conn, mkt, sym)
    st = vector_index.ensure(conn, min_rows=index_min_rows)
    s.index = (f"{st.action}: {st.index} (lists {st.lists}, probes "
               f"{st.probes or 'not calibrated'}, built at {st.built_rows} rows; "
               f"{st.rows} rows now)" if st.index else f"{st.action}: {st.rows} rows")
    s.seconds = time.monotonic() - t0
    log.info("embed done", **s.as_dict())
    return s


def _embed_batch(conn: psycopg.Connection, market: str, symbol: str, todo: list,
                 s: EmbedSummary) -> None:
    sha = {to_us(b): digest for b, digest in todo}
    ticks = read_ticks(conn, market, symbol, [b for b, _ in todo])
    rows = []
    if ticks.num_rows:
        starts, offsets = features.window_offsets(ticks.column("b").to_numpy())
        kept, vecs = features.embed_windows(
            offsets, ticks.column("t").to_numpy(), ticks.column("price").to_numpy(),
            ticks.column("qty").to_numpy(), ticks.column("bm").to_numpy(zero_copy_only=False),
            starts)
        s.skipped_few_trades += len(starts) - len(kept)
        rows = [(market, symbol, to_dt(int(starts[i])), v, features.FEATURE_VERSION,
                 sha[int(starts[i])]) for i, v in zip(kept, vecs, strict=True)]
    if not rows:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(query(__package__, "create_emb_stage"))
        with cur.copy(query(__package__, "copy_emb_stage")) as cp:
            cp.set_types(["text", "text", "timestamptz", "vector", "int2", "text"])
            for r in rows:
                cp.write_row(r)
        cur.execute(query(__package__, "upsert_embeddings"))
    s.embedded += len(rows)


def _update_labels(conn: psycopg.Connection, market: str, symbol: str) -> int:
    """Fill label keys whose horizon now has data; write only rows whose labels changed."""
    want = {"fwd_ret_5m", "fwd_ret_15m", "fwd_ret_60m", "fwd_vol_60m"}
    incomplete = conn.execute(query(__package__, "incomplete_labels"),
                              [market, symbol, sorted(want)]).fetchall()
    if not incomplete:
        return 0
    closes = {to_us(b): float(c) for b, c in conn.execute(
        query(__package__, "closes_since"), [market, symbol, min(b for b, _ in incomplete)])}
    changes = []
    for bucket, current in incomplete:
        new = {**current, **features.labels(closes, to_us(bucket))}
        if new != current:
            changes.append((json.dumps(new), market, symbol, bucket))
    if changes:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(query(__package__, "update_labels"), changes)
    return len(changes)

