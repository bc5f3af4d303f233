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
from workers.core.sqlfiles import query as query_sql
from workers.core.sqlfiles import template
from workers.signals import vector_index

LABEL_KEYS = ("fwd_ret_5m", "fwd_ret_15m", "fwd_ret_60m", "fwd_vol_60m")
MAX_K = 1000
MAX_PROBES = 32768  # pgvector's limit for ivfflat.probes (its largest number of lists)
MAX_EXCLUDE_MINUTES = 100 * 366 * 24 * 60  # a century: beyond it nothing is left to search


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
    market: str = "spot"
    changed = False  # a query changes nothing

    def as_dict(self) -> dict:
        return dict(vars(self))

    def __getitem__(self, key: str):  # read like the JSON it prints
        return self.as_dict()[key]

    def table(self):
        """The neighbours and what followed each, as `workers similar` shows them (rich)."""
        from rich.table import Table

        t = Table(title=f"{self.symbol} windows most like {self.window} "
                        f"(k={self.k}, probes={self.probes or 'exact'})")
        for col in ("window", "distance", "+5m", "+15m", "+60m", "vol 60m"):
            t.add_column(col, justify="right")
        for n in self.neighbours:
            t.add_row(n["bucket"][:16], f"{n['distance']:.4f}",
                      *(pct(n["labels"].get(key)) for key in LABEL_KEYS))
        t.add_section()
        t.add_row("neighbours' mean", "",
                  *(pct(self.means[key]["neighbours"]) for key in LABEL_KEYS))
        t.add_row("all windows' mean", "",
                  *(pct(self.means[key]["unconditional"]) for key in LABEL_KEYS))
        return t

    def summary(self) -> str:
        m = self.means["fwd_ret_60m"]
        return (f"{len(self.neighbours)} windows most like {self.window[:16]} (probes "
                f"{self.probes or 'exact'}); next hour: neighbours {pct(m['neighbours'])} vs "
                f"all {pct(m['unconditional'])}")


def check_options(*, k: int, probes: int | None, exclude_minutes: int) -> None:
    """Out-of-range options are bad input (exit 2), caught before any query."""
    if not 1 <= k <= MAX_K:
        raise BadInput(f"-k must be between 1 and {MAX_K}, not {k}")
    if probes is not None and not 1 <= probes <= MAX_PROBES:
        raise BadInput(f"--probes must be between 1 and {MAX_PROBES} (pgvector's limit), "
                       f"not {probes}")
    if not 0 <= exclude_minutes <= MAX_EXCLUDE_MINUTES:
        raise BadInput(f"--exclude-minutes must be between 0 and {MAX_EXCLUDE_MINUTES}, "
                       f"not {exclude_minutes}")


def window_of(at: datetime) -> datetime:
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return at - timedelta(minutes=at.minute % 5, seconds=at.second, microseconds=at.microsecond)


def latest_window(conn: psycopg.Connection, symbol: str, *, labelled: bool = False,
                  market: str = "spot") -> datetime:
    """The newest embedded window (`labelled`: the newest whose next hour is known)."""
    row = conn.execute(query_sql(__package__, "latest_window"),
                       [market, symbol, labelled]).fetchone()
    if row[0] is None:
        raise NoEmbedding(f"no embedded window{' with a known next hour' if labelled else ''} "
                          f"for {symbol} yet: run `workers embed` first")
    return row[0]


def nearest(conn: psycopg.Connection, vec, *, market: str, symbol: str, upto: datetime,
            k: int = 10, probes: int | None = None, exact: bool = False,
            index: vector_index.Index | None = None) -> tuple[list[tuple], int | None]:
    """The k windows of one series nearest to `vec` up to `upto`: (bucket, distance, labels)
    rows and the probes used (None: exact scan). Through the ivfflat index when one of the
    current kind is in use (`index`: as vector_index.current() returned it), else exact."""
    if index is None and not exact:
        index = vector_index.current(conn)
    use_index = not exact and index is not None and index.kind == vector_index.KIND
    params = vector_index.knn_params(vec, market=market, symbol=symbol, upto=upto, k=k)
    if not use_index:
        return conn.execute(query_sql(__package__, "knn_exact"), params,
                            prepare=True).fetchall(), None
    used = int(probes or index.query_probes)
    return vector_index.search(conn, params, used), used


def query(conn: psycopg.Connection, *, symbol: str, at: datetime, k: int = 10,
          market: str = "spot",
          exclude_minutes: int = 60, probes: int | None = None) -> Similar:
    check_options(k=k, probes=probes, exclude_minutes=exclude_minutes)
    register_vector(conn)
    bucket = window_of(at)
    row = conn.execute(query_sql(__package__, "window_embedding"),
                       [market, symbol, bucket]).fetchone()
    if row is None:
        raise NoEmbedding(f"no embedding for {symbol} at {bucket:%Y-%m-%d %H:%M} UTC (the "
                          "window has no ticks, too few trades, or `embed` has not run yet)")
    vec, own_labels = row
    idx = vector_index.current(conn)
    # Neighbours end before the query's own neighbourhood in time (its own window included
    # when exclude_minutes is 0).
    try:
        upto = bucket - timedelta(minutes=exclude_minutes,
                                  microseconds=1 if exclude_minutes else 0)
    except OverflowError:  # before year 1: nothing is that old
        raise BadInput(f"--exclude-minutes {exclude_minutes} reaches before year 1 from "
                       f"{bucket:%Y-%m-%d %H:%M}") from None
    rows, used_probes = nearest(conn, vec, market=market, symbol=symbol, upto=upto, k=k,
                                probes=probes, index=idx)
    with conn.transaction():
        mean = template(__package__, "label_mean")
        uncond = conn.execute(template(__package__, "label_means").format(
            means=sql.SQL(", ").join(mean.format(key=sql.Literal(key)) for key in LABEL_KEYS)),
            [market, symbol]).fetchone()
    neighbours = [{"bucket": b.isoformat(), "distance": float(d), "labels": lab}
                  for b, d, lab in rows]
    means = {}
    for i, key in enumerate(LABEL_KEYS):
        vals = [n["labels"][key] for n in neighbours if key in n["labels"]]
        means[key] = {"neighbours": sum(vals) / len(vals) if vals else None, "n": len(vals),
                      "unconditional": uncond[i]}
    return Similar(symbol, bucket.isoformat(), own_labels, k, exclude_minutes, used_probes,
                   idx.name if idx and used_probes else None, neighbours, means, market)
