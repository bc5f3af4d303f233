"""The tick contract every layer shares: the landed schema, its version, the bucket width and
the conversions between microseconds since the epoch (how ticks are carried) and datetimes
(how the database returns them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING

# Re-exported: messages everywhere import it from here (it lives with the errors it guards).
from workers.core.errors import printable as printable

if TYPE_CHECKING:
    import pyarrow as pa


@cache
def tick_schema() -> pa.Schema:
    """What lands and loads (schema_version 2 of the landing objects; version 1 had no
    trade_kind). Built on first use: what only checks names and times never loads pyarrow."""
    import pyarrow as pa

    return pa.schema([
        ("trade_id", pa.int64()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("price", pa.decimal128(24, 8)),
        ("quantity", pa.decimal128(24, 8)),
        ("quote_quantity", pa.decimal128(32, 8)),
        ("is_buyer_maker", pa.bool_()),
        # NULL: an ordinary trade; otherwise what the exchange says it is (USDⓈ-M `X`:
        # INSURANCE_FUND, ADL, ...): kept, flagged, left out of the OHLCV.
        ("trade_kind", pa.string()),
    ])


def __getattr__(name: str):
    if name == "TICK_SCHEMA":  # `from workers.core.ticks import TICK_SCHEMA` still works
        return tick_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SCHEMA_VERSION = 2

def conform(table: pa.Table) -> pa.Table:
    """A landed table in the current schema (objects of schema version 1 have no trade_kind)."""
    import pyarrow as pa

    if "trade_kind" not in table.column_names:
        table = table.append_column("trade_kind", pa.nulls(table.num_rows, pa.string()))
    schema = tick_schema()
    return table.select(schema.names).cast(schema)

BUCKET_US = 300_000_000  # 5 minutes


def to_dt(us: int) -> datetime:
    """Microseconds since the epoch -> aware UTC datetime (exact: no float rounding)."""
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def to_us(t: datetime) -> int:
    """Aware datetime -> microseconds since the epoch (exact)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso(us: int) -> str:
    """A bucket or instant as `YYYY-MM-DDTHH:MM:SSZ` for messages."""
    return to_dt(us).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> int:
    """An ISO timestamp (UTC when it names no zone) -> µs; ValueError with the text otherwise."""
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO timestamp: {value!r}") from None
    return to_us(t)
