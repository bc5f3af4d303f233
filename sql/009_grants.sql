-- Least privilege per worker. Default privileges make future tables follow the same rules.
GRANT USAGE ON SCHEMA landing, market_data, signals, ingestion, ops
    TO tickstack_ingest, tickstack_embed, tickstack_retention, tickstack_reader;

-- Readers read everything tickstack keeps, now and later.
-- (ops by name: the migration ledger there belongs to the admin, not to the migrator.)
GRANT SELECT ON ALL TABLES IN SCHEMA landing, market_data, signals, ingestion
    TO tickstack_reader;
GRANT SELECT ON ops.retention_jobs, ops.retention_runs TO tickstack_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE tickstack_migrator IN SCHEMA
    landing, market_data, signals, ingestion, ops GRANT SELECT ON TABLES TO tickstack_reader;

-- Ingest: writes ticks, the landing registry, aggregates and offsets. No DELETE, no DDL.
GRANT SELECT, INSERT ON market_data.btc_ticks TO tickstack_ingest;
GRANT SELECT, INSERT, UPDATE ON landing.raw_blobs_5m, market_data.btc_ohlcv_5m,
    ingestion.stream_offsets TO tickstack_ingest;
ALTER DEFAULT PRIVILEGES FOR ROLE tickstack_migrator IN SCHEMA landing, market_data, ingestion
    GRANT SELECT ON TABLES TO tickstack_ingest;

-- Embeddings: reads market data and the registry, writes embeddings.
GRANT SELECT ON ALL TABLES IN SCHEMA market_data, landing TO tickstack_embed;
GRANT SELECT, INSERT, UPDATE ON signals.btc_embeddings TO tickstack_embed;
ALTER DEFAULT PRIVILEGES FOR ROLE tickstack_migrator IN SCHEMA market_data, landing
    GRANT SELECT ON TABLES TO tickstack_embed;

-- Retention: may remove old data (and reads what it needs to decide), nothing else.
GRANT SELECT, DELETE ON market_data.btc_ticks, market_data.btc_ohlcv_5m TO tickstack_retention;
GRANT SELECT ON landing.raw_blobs_5m, ops.retention_jobs TO tickstack_retention;
GRANT SELECT, INSERT ON ops.retention_runs TO tickstack_retention;
-- Embeddings of deleted windows go with them through ON DELETE CASCADE, which PostgreSQL runs
-- as the table owner: retention needs no privilege on signals.
