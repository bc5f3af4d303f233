-- Compression for market_data.btc_ticks on databases created before TimescaleDB was licensed.
-- 005 configures compression only where the licence is `timescale`; a database migrated with
-- the Apache-only build and then moved to the licensed one in place (ALTER EXTENSION
-- timescaledb UPDATE, done by `python -m infra.local up`) would otherwise have a hypertable
-- retention cannot compress. Same settings as 005, segmented by market and symbol (014); nothing
-- happens where they are already set, where the licence is not `timescale`, or without
-- TimescaleDB (the replica).
DO $$
BEGIN
    -- Nested: the view exists only with TimescaleDB, and PL/pgSQL parses a condition when
    -- it first evaluates it.
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       AND current_setting('timescaledb.license', true) = 'timescale' THEN
        IF EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                   WHERE hypertable_schema = 'market_data' AND hypertable_name = 'btc_ticks'
                     AND NOT compression_enabled) THEN
            ALTER TABLE market_data.btc_ticks SET (
                timescaledb.compress,
                timescaledb.compress_segmentby = 'market, symbol',
                timescaledb.compress_orderby = 'event_time DESC');
            RAISE NOTICE 'tickstack: compression configured on market_data.btc_ticks';
        END IF;
    END IF;
END
$$;
