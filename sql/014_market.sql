-- The market is part of a trade's identity: Binance trade ids are per market, and the same
-- symbol (BTCUSDT) trades on spot and on USDⓈ-M futures at different prices. Every table keyed
-- by symbol gets `market` ('spot', 'um' = USDⓈ-M, 'cm' = COIN-M) in its key, so two markets are
-- never merged, deduplicated against each other or aggregated together. Everything ingested so
-- far came from spot files and streams: existing rows become 'spot'.
--
-- USDⓈ-M streams also carry trades that are not ordinary market trades (insurance fund, ADL):
-- they are kept, flagged by `trade_kind` (NULL: an ordinary trade), and left out of the OHLCV.

-- Compression (licensed TimescaleDB) blocks key changes: decompress, change, compress again by
-- (market, symbol). The retention job compresses old chunks again on its next run.
DO $$
DECLARE
    compressed boolean := false;
    c record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        SELECT h.compression_enabled INTO compressed
        FROM timescaledb_information.hypertables h
        WHERE h.hypertable_schema = 'market_data' AND h.hypertable_name = 'btc_ticks';
        IF coalesce(compressed, false) THEN
            FOR c IN SELECT format('%I.%I', chunk_schema, chunk_name) AS chunk
                     FROM timescaledb_information.chunks
                     WHERE hypertable_schema = 'market_data' AND hypertable_name = 'btc_ticks'
                       AND is_compressed
            LOOP
                PERFORM public.decompress_chunk(c.chunk::regclass);
            END LOOP;
            ALTER TABLE market_data.btc_ticks SET (timescaledb.compress = false);
        END IF;
    END IF;

    ALTER TABLE market_data.btc_ticks
        ADD COLUMN market text NOT NULL DEFAULT 'spot' CHECK (market IN ('spot', 'um', 'cm')),
        ADD COLUMN trade_kind text CHECK (trade_kind ~ '^[A-Z_]{1,32}$');
    ALTER TABLE market_data.btc_ticks DROP CONSTRAINT btc_ticks_pkey;
    ALTER TABLE market_data.btc_ticks ADD PRIMARY KEY (bucket_5m, market, symbol, trade_id);
    DROP INDEX market_data.btc_ticks_symbol_time_idx;
    CREATE INDEX btc_ticks_market_symbol_time_idx
        ON market_data.btc_ticks (market, symbol, event_time DESC);

    IF coalesce(compressed, false) THEN
        ALTER TABLE market_data.btc_ticks SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'market, symbol',
            timescaledb.compress_orderby = 'event_time DESC');
    END IF;
END
$$;
ALTER TABLE market_data.btc_ticks ALTER COLUMN market DROP DEFAULT;

-- The aggregate and the embeddings that reference it.
ALTER TABLE signals.btc_embeddings DROP CONSTRAINT btc_embeddings_symbol_bucket_fkey;
ALTER TABLE market_data.btc_ohlcv_5m
    ADD COLUMN market text NOT NULL DEFAULT 'spot' CHECK (market IN ('spot', 'um', 'cm'));
ALTER TABLE market_data.btc_ohlcv_5m DROP CONSTRAINT btc_ohlcv_5m_pkey;
ALTER TABLE market_data.btc_ohlcv_5m ADD PRIMARY KEY (market, symbol, bucket_5m);
ALTER TABLE market_data.btc_ohlcv_5m ALTER COLUMN market DROP DEFAULT;
-- Trade-id ranges per bucket: finds another bucket that already holds an incoming trade id.
CREATE INDEX btc_ohlcv_5m_trade_ids_idx
    ON market_data.btc_ohlcv_5m (market, symbol, last_trade_id);

ALTER TABLE signals.btc_embeddings
    ADD COLUMN market text NOT NULL DEFAULT 'spot' CHECK (market IN ('spot', 'um', 'cm'));
ALTER TABLE signals.btc_embeddings DROP CONSTRAINT btc_embeddings_pkey;
ALTER TABLE signals.btc_embeddings ADD PRIMARY KEY (market, symbol, bucket);
ALTER TABLE signals.btc_embeddings ADD FOREIGN KEY (market, symbol, bucket)
    REFERENCES market_data.btc_ohlcv_5m (market, symbol, bucket_5m) ON DELETE CASCADE;
ALTER TABLE signals.btc_embeddings ALTER COLUMN market DROP DEFAULT;

-- The landing registry: one object per (market, asset, 5-minute bucket).
ALTER TABLE landing.raw_blobs_5m
    ADD COLUMN market text NOT NULL DEFAULT 'spot' CHECK (market IN ('spot', 'um', 'cm'));
ALTER TABLE landing.raw_blobs_5m DROP CONSTRAINT raw_blobs_5m_pkey;
ALTER TABLE landing.raw_blobs_5m ADD PRIMARY KEY (market, asset, bucket_5m);
ALTER TABLE landing.raw_blobs_5m ALTER COLUMN market DROP DEFAULT;

-- Offsets, gaps and replica lag: per market too (a futures stream never advances spot's).
ALTER TABLE ingestion.stream_offsets
    ADD COLUMN market text NOT NULL DEFAULT 'spot' CHECK (market IN ('spot', 'um', 'cm'));
ALTER TABLE ingestion.stream_offsets DROP CONSTRAINT stream_offsets_pkey;
ALTER TABLE ingestion.stream_offsets ADD PRIMARY KEY (source, market, symbol);
ALTER TABLE ingestion.stream_offsets ALTER COLUMN market DROP DEFAULT;

ALTER TABLE ingestion.stream_gaps
    ADD COLUMN market text NOT NULL DEFAULT 'spot' CHECK (market IN ('spot', 'um', 'cm'));
ALTER TABLE ingestion.stream_gaps DROP CONSTRAINT stream_gaps_pkey;
ALTER TABLE ingestion.stream_gaps ADD PRIMARY KEY (source, market, symbol, first_missing_id);
ALTER TABLE ingestion.stream_gaps ALTER COLUMN market DROP DEFAULT;
DROP INDEX ingestion.stream_gaps_open_idx;
CREATE INDEX stream_gaps_open_idx ON ingestion.stream_gaps (market, symbol, first_missing_id)
    WHERE filled_at IS NULL;

ALTER TABLE ingestion.replica_lag
    ADD COLUMN market text NOT NULL DEFAULT 'spot' CHECK (market IN ('spot', 'um', 'cm'));
ALTER TABLE ingestion.replica_lag DROP CONSTRAINT replica_lag_pkey;
ALTER TABLE ingestion.replica_lag ADD PRIMARY KEY (market, symbol, bucket_5m);
ALTER TABLE ingestion.replica_lag ALTER COLUMN market DROP DEFAULT;
