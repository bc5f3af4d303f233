"""`workers similar`: when the market looked like this, what happened next?

The k nearest past windows by cosine distance (the query's own neighbourhood in time excluded),
what followed each (label_snapshot), and the neighbours' mean forward returns against the
unconditional mean over all labelled windows. Read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from workers.core.errors import BadInput
from workers.signals import vector_index

LABEL_KEYS = ("fwd_ret_5m", "fwd_ret_15m", "fwd_ret_60m", "fwd_vol_60m")


class NoEmbedding(BadInput, LookupError):
    pass


def pct(x: float | None) -> str:
    """A fraction as a signed percentage with 3 places ("-" when unknown)."""
    return "-" if x is None else f"{x * 100:+.3f}%"


@dataclass
class Similar:
    """The answer of one query; `as_dict()` is the JSON of `workers similar --json`."""

    symbol: str
    window: str
    labels: dict
    k: int
    exclude_minutes: int
    probes: int | None
    index: str | None
    neighbours: list[dict]
    means: dict
    changed = False  # a query changes nothing

    def as_dict(self) -> dict:
        return dict(vars(self))

    def __getitem__(self, key: str):  # read like the JSON it prints
        return self.as_dict()[key]

    def summary(self) -> str:
        m = self.means["fwd_ret_60m"]
        return (f"{len(self.neighbours)} windows most like {self.window[:16]} (probes "
                f"{self.probes or 'exact'}); next hour: neighbours {pct(m['neighbours'])} vs "
                f"all {pct(m['unconditional'])}")


def window_of(at: datetime) -> datetime:
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return at - timedelta(minutes=at.minute % 5, seconds=at.second, microseconds=at.microsecond)


def latest_window(conn: psycopg.Connection, symbol: str, *, labelled: bool = False
                  ) -> datetime:
    """The newest embedded window (`labelled`: the newest whose next hour is known)."""
    row = conn.execute("SELECT max(bucket) FROM signals.btc_embeddings WHERE symbol = %s "
                       "AND (NOT %s OR label_snapshot ? 'fwd_ret_60m')",
                       [symbol, labelled]).fetchone()
    if row[0] is None:
        raise NoEmbedding(f"no embedded window{' with a known next hour' if labelled else ''} "
                          f"for {symbol} yet: run `workers embed` first")
    return row[0]


def query(conn: psycopg.Connection, *, symbol: str, at: datetime, k: int = 10,
          exclude_minutes: int = 60, probes: int | None = None) -> Similar:
    register_vector(conn)
    bucket = window_of(at)
    row = conn.execute("SELECT feature_vector, label_snapshot FROM signals.btc_embeddings "
                       "WHERE symbol = %s AND bucket = %s", [symbol, bucket]).fetchone()
    if row is None:
        raise NoEmbedding(f"no embedding for {symbol} at {bucket:%Y-%m-%d %H:%M} UTC (the "
                          "window has no ticks, too few trades, or `embed` has not run yet)")
    vec, own_labels = row
    idx = vector_index.current(conn)
    used_probes = probes or (vector_index.probes_for(idx[2]) if idx else None)
    with conn.transaction():
        if used_probes:
            conn.execute(sql.SQL("SET LOCAL ivfflat.probes = {}").format(
                sql.Literal(int(used_probes))))
            # The time filter is applied after the index scan: let pgvector (>= 0.8) keep
            # scanning lists until k rows pass it, instead of returning fewer than asked.
            conn.execute("SET LOCAL ivfflat.iterative_scan = relaxed_order")
        limit = bucket if exclude_minutes == 0 else bucket - timedelta(minutes=exclude_minutes)
        op = "<=" if exclude_minutes == 0 else "<"
        rows = conn.execute(
            # relaxed_order may hand rows back slightly out of order: sort them again.
            sql.SQL("WITH nn AS MATERIALIZED (SELECT bucket, feature_vector <=> %s AS distance, "
                    "label_snapshot FROM signals.btc_embeddings "
                    "WHERE symbol = %s AND bucket {} %s "
                    "ORDER BY feature_vector <=> %s LIMIT %s) "
                    "SELECT * FROM nn ORDER BY distance, bucket").format(sql.SQL(op)),
            [vec, symbol, limit, vec, k]).fetchall()
        uncond = conn.execute(
            sql.SQL("SELECT {} FROM signals.btc_embeddings WHERE symbol = %s").format(
                sql.SQL(", ").join(
                    sql.SQL("avg((label_snapshot->>{})::float8)").format(sql.Literal(key))
                    for key in LABEL_KEYS)), [symbol]).fetchone()
    neighbours = [{"bucket": b.isoformat(), "distance": float(d), "labels": lab}
                  for b, d, lab in rows]
    means = {}
    for i, key in enumerate(LABEL_KEYS):
        vals = [n["labels"][key] for n in neighbours if key in n["labels"]]
        means[key] = {"neighbours": sum(vals) / len(vals) if vals else None, "n": len(vals),
                      "unconditional": uncond[i]}
    return Similar(symbol, bucket.isoformat(), own_labels, k, exclude_minutes, used_probes,
                   idx[0] if idx else None, neighbours, means)
