"""Generated windows loaded straight into signals.btc_embeddings, the index they get, and
exact answers to compare the index's with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from pgvector.psycopg import register_vector

from tests.integration.pipeline import Stack
from workers.signals import similar

DAY = "BTCUSDT-trades-2019-04-01"


def index_names(stack: Stack) -> list[str]:
    with stack.admin() as c:
        return [r[0] for r in c.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'signals' "
            "AND tablename = 'btc_embeddings' AND indexdef LIKE '%%ivfflat%%' ORDER BY 1")]


def index_defs(stack: Stack) -> list[str]:
    with stack.admin() as c:
        return [r[0] for r in c.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'signals' "
            "AND tablename = 'btc_embeddings' AND indexdef LIKE '%%ivfflat%%'")]


T0 = datetime(2018, 1, 1, tzinfo=UTC)


def generated(n: int, seed: int = 1) -> np.ndarray:
    """Unit vectors around 20 centres: clustered, as market windows are. Another seed draws
    other centres too: windows unlike any in a table made with the first."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 256))
    v = centres[rng.integers(0, 20, n)] + rng.normal(scale=0.7, size=(n, 256))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def held_out(n: int, seed: int) -> np.ndarray:
    """New windows like those of generated(n) (its centres, other draws): what a new market
    window is to a table of past ones."""
    centres = np.random.default_rng(1).normal(size=(20, 256))  # generated()'s, seed 1
    rng = np.random.default_rng([seed, 1])
    v = centres[rng.integers(0, 20, n)] + rng.normal(scale=0.7, size=(n, 256))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def load_generated(stack: Stack, vecs: np.ndarray, first: int = 0) -> None:
    """Windows first.. (5 minutes apart from T0) with these vectors, and their aggregate rows
    (the foreign key's target), as the owner: what the benchmark loads, in small."""
    buckets = [T0 + timedelta(minutes=5 * (first + i)) for i in range(len(vecs))]
    with stack.admin() as c:
        with c.transaction(), c.cursor() as cur, cur.copy(
                "COPY market_data.btc_ohlcv_5m (market, symbol, bucket_5m, open, high, low, "
                "close, volume, quote_volume, trade_count, buy_volume, first_trade_id, "
                "last_trade_id) FROM STDIN") as cp:
            for i, b in enumerate(buckets):
                cp.write_row(("spot", "BTCUSDT", b, 1, 1, 1, 1, 1, 1, 1, 0, first + i, first + i))
        c.execute("ANALYZE market_data.btc_ohlcv_5m")
        register_vector(c)
        with c.transaction(), c.cursor() as cur, cur.copy(
                "COPY signals.btc_embeddings (market, symbol, bucket, feature_vector, "
                "feature_version, source_sha256) FROM STDIN (FORMAT binary)") as cp:
            cp.set_types(["text", "text", "timestamptz", "vector", "int2", "text"])
            for b, v in zip(buckets, vecs, strict=True):
                cp.write_row(("spot", "BTCUSDT", b, v, 2, "0" * 64))


def reader(stack: Stack):
    return stack.db.connect(user="reader", password=stack.env.secrets["reader"])


def exact_answers(stack: Stack, queries: list[tuple[datetime, np.ndarray]]) -> list[list[str]]:
    with reader(stack) as c:
        register_vector(c)
        return [[r[0].isoformat() for r in similar.nearest(
            c, v, market="spot", symbol="BTCUSDT", upto=upto, k=10, exact=True)[0]]
            for upto, v in queries]


def query_text(name: str) -> str:
    from workers.core.sqlfiles import query

    return query("workers.signals", name)
