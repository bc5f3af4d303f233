"""The markets lookup table (sql/026) on real servers: it holds the workers' registry, every
`market` column references it instead of listing the markets in a CHECK, and the migration
goes through on a primary whose ticks sit in compressed chunks (the path an existing primary
takes)."""

from __future__ import annotations

import shutil

import psycopg
import pytest

from tests.integration.db import FreshDb
from workers.core.markets import MARKETS
from workers.db import migrate

MARKET_TABLES = ("landing.raw_blobs_5m", "market_data.btc_ticks", "market_data.btc_ohlcv_5m",
                 "market_data.tick_digests", "signals.btc_embeddings", "ingestion.file_loads",
                 "ingestion.replica_lag", "ingestion.stream_gaps", "ingestion.stream_offsets")
TICK = ("INSERT INTO market_data.btc_ticks (bucket_5m, market, symbol, trade_id, event_time, "
        "price, quantity, is_buyer_maker) VALUES ('2024-01-01 00:05', %s, 'BTCUSDT', %s, "
        "'2024-01-01 00:06', 42000, 0.5, true)")
REFERENCING = """
SELECT c.conrelid::regclass::text, c.confrelid::regclass::text
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
WHERE c.contype = 'f' AND c.confrelid = 'ingestion.markets'::regclass
"""
MARKET_CHECKS = """
SELECT c.conrelid::regclass::text FROM pg_constraint c
WHERE c.contype = 'c' AND pg_get_constraintdef(c.oid) LIKE '%market%=%ANY%'
"""


@pytest.mark.parametrize("server", ["primary", "replica"])
def test_every_market_column_references_the_table_of_the_registrys_markets(local_env, server):
    db = FreshDb(local_env, server)
    try:
        migrate.run(db.dsn, password=db.password, logins=local_env.worker_logins())
        with db.connect() as c:
            seeded = {m for (m,) in c.execute("SELECT market FROM ingestion.markets")}
            assert seeded == set(MARKETS)
            refs = sorted(t for t, _ in c.execute(REFERENCING))
            assert refs == sorted(MARKET_TABLES)
            assert c.execute(MARKET_CHECKS).fetchall() == []
        with db.connect(user="ingest_worker",
                        password=local_env.secrets["ingest_worker"]) as c:
            c.execute(TICK, ["um", 1])
            with pytest.raises(psycopg.errors.ForeignKeyViolation, match="markets"):
                c.execute(TICK, ["margin", 2])
    finally:
        db.drop()


def test_026_applies_over_compressed_chunks(local_env, tmp_path):
    d = tmp_path / "sql"
    d.mkdir()
    for p in migrate.SQL_DIR.iterdir():
        if p.name == migrate.LEDGER_FILE or (p.suffix == ".sql" and p.name < "026_"):
            shutil.copy(p, d / p.name)
    db = FreshDb(local_env, "primary")
    try:
        migrate.run(db.dsn, password=db.password, sql_dir=d)
        with db.connect() as c:
            c.execute(TICK, ["spot", 1])
            assert c.execute("SELECT count(public.compress_chunk(ch)) FROM "
                             "public.show_chunks('market_data.btc_ticks') ch").fetchone() == (1,)
        r = migrate.run(db.dsn, password=db.password)
        assert r.applied == ["026_markets_table.sql"]
        with db.connect() as c:
            assert c.execute("SELECT count(*) FROM timescaledb_information.chunks WHERE "
                             "hypertable_name = 'btc_ticks' AND is_compressed").fetchone() == (1,)
            assert c.execute("SELECT market, trade_id FROM market_data.btc_ticks"
                             ).fetchall() == [("spot", 1)]
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                c.execute(TICK, ["margin", 2])
    finally:
        db.drop()
