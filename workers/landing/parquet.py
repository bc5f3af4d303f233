"""How a landing object's rows become bytes: one writer, whole or streamed, same bytes.

Same rows -> same bytes: the SHA-256 identifies content, so an unchanged merge is a no-op and
two writers of the same rows (a file ingest, a stream compaction, a merge streamed over a large
object) store identical objects. Row groups hold ROW_GROUP rows each, in trade-id order.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from workers.core.ticks import TICK_SCHEMA

ROW_GROUP = 65_536  # rows per row group; a bucket this small or smaller is one row group

# Ids and times rise within a bucket: delta-encoded (every Parquet reader knows it), no
# dictionaries (prices and sizes rarely repeat enough), statistics where readers prune.
# Measured on a day of 2024-like trades: a third of the CPU time and ~30% smaller objects
# than zstd with Arrow's defaults. Objects written before keep their bytes until a merge
# adds rows to them.
OPTIONS = {"compression": "zstd", "use_dictionary": False,
           "column_encoding": {"trade_id": "DELTA_BINARY_PACKED",
                               "event_time": "DELTA_BINARY_PACKED"},
           "write_statistics": ["trade_id", "event_time"]}


def to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()  # one chunk per column: page cuts never depend on how rows arrived
    pq.write_table(table.combine_chunks(), buf, row_group_size=ROW_GROUP, **OPTIONS)
    return buf.getvalue()


class StreamWriter:
    """Rows in trade-id order, a piece at a time -> the bytes `to_parquet` gives for all of
    them at once (row groups cut at the same rows), holding at most one row group of rows."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._writer = pq.ParquetWriter(self._buf, TICK_SCHEMA, **OPTIONS)
        self._pending: list[pa.Table] = []
        self._n = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._pending.append(table.cast(TICK_SCHEMA))
        self._n += table.num_rows
        self.rows += table.num_rows
        if self._n >= ROW_GROUP:
            t = pa.concat_tables(self._pending).combine_chunks()
            full = (t.num_rows // ROW_GROUP) * ROW_GROUP
            for i in range(0, full, ROW_GROUP):
                self._writer.write_table(t.slice(i, ROW_GROUP), row_group_size=ROW_GROUP)
            rest = t.slice(full)
            self._pending, self._n = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> bytes:
        if self._pending:
            t = pa.concat_tables(self._pending).combine_chunks()
            self._writer.write_table(t, row_group_size=ROW_GROUP)
        self._pending = []
        self._writer.close()
        return self._buf.getvalue()
