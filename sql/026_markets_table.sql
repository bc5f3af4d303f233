-- Issue 28, item 2: the markets get one room in SQL as in Python. 014 and 018 wrote the list of
-- markets into nine CHECK (market IN ('spot', 'um', 'cm')) constraints, so adding a market
-- altered nine constraints. Now `ingestion.markets` holds the markets — the same names, in the
-- same order, as the workers' registry (workers/core/markets.py; tests/unit/test_markets.py
-- fails when the two disagree) — and every `market` column references it. Adding a market is
-- one INSERT in a new migration (docs/extending.md).
--
-- Runs alike on both servers: a foreign key from a hypertable (market_data.btc_ticks on the
-- primary) to a plain table is supported by TimescaleDB, compressed chunks included (the
-- existing rows are validated when the key is added).
CREATE TABLE ingestion.markets (
    market text PRIMARY KEY CHECK (market ~ '^[a-z][a-z0-9_]{0,15}$'),
    title  text NOT NULL CHECK (length(title) BETWEEN 1 AND 40)
);
COMMENT ON TABLE ingestion.markets IS
    'The markets a trade can belong to (workers/core/markets.py is the same list).';

INSERT INTO ingestion.markets (market, title) VALUES
    ('spot', 'spot'),
    ('um', 'USDⓈ-M futures'),
    ('cm', 'COIN-M futures');

ALTER TABLE market_data.btc_ticks DROP CONSTRAINT btc_ticks_market_check,
    ADD CONSTRAINT btc_ticks_market_fkey FOREIGN KEY (market) REFERENCES ingestion.markets;
ALTER TABLE market_data.btc_ohlcv_5m DROP CONSTRAINT btc_ohlcv_5m_market_check,
    ADD CONSTRAINT btc_ohlcv_5m_market_fkey FOREIGN KEY (market) REFERENCES ingestion.markets;
ALTER TABLE market_data.tick_digests DROP CONSTRAINT tick_digests_market_check,
    ADD CONSTRAINT tick_digests_market_fkey FOREIGN KEY (market) REFERENCES ingestion.markets;
ALTER TABLE signals.btc_embeddings DROP CONSTRAINT btc_embeddings_market_check,
    ADD CONSTRAINT btc_embeddings_market_fkey FOREIGN KEY (market) REFERENCES ingestion.markets;
ALTER TABLE landing.raw_blobs_5m DROP CONSTRAINT raw_blobs_5m_market_check,
    ADD CONSTRAINT raw_blobs_5m_market_fkey FOREIGN KEY (market) REFERENCES ingestion.markets;
ALTER TABLE ingestion.stream_offsets DROP CONSTRAINT stream_offsets_market_check,
    ADD CONSTRAINT stream_offsets_market_fkey FOREIGN KEY (market) REFERENCES ingestion.markets;
ALTER TABLE ingestion.stream_gaps DROP CONSTRAINT stream_gaps_market_check,
    ADD CONSTRAINT stream_gaps_market_fkey FOREIGN KEY (market) REFERENCES ingestion.markets;
ALTER TABLE ingestion.replica_lag DROP CONSTRAINT replica_lag_market_check,
    ADD CONSTRAINT replica_lag_market_fkey FOREIGN KEY (market) REFERENCES ingestion.markets;
ALTER TABLE ingestion.file_loads DROP CONSTRAINT file_loads_market_check,
    ADD CONSTRAINT file_loads_market_fkey FOREIGN KEY (market) REFERENCES ingestion.markets;

-- Readable by every login that reads a table referencing it (the privilege matrix:
-- tests/integration/test_roles_per_server.py). The keys' own checks run as the tables' owner.
-- replicate reads it through tickstack_ingest where it has that (the replica, sql/015/021);
-- backup reads the landing registry on the primary only (sql/024).
GRANT SELECT ON ingestion.markets
    TO tickstack_ingest, tickstack_embed, tickstack_retention, tickstack_reader;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        GRANT USAGE ON SCHEMA ingestion TO tickstack_backup;
        GRANT SELECT ON ingestion.markets TO tickstack_backup;
    END IF;
END
$$;
