-- market_data.btc_ticks: every accepted trade; deduplicated on (bucket_5m, symbol, trade_id).
-- Capability-aware: a 7-day-chunk hypertable on bucket_5m where TimescaleDB is installed
-- (compressed only where licensed), a plain table with a BRIN index elsewhere (the replica).
CREATE TABLE market_data.btc_ticks (
    bucket_5m       timestamptz   NOT NULL,
    symbol          text          NOT NULL CHECK (symbol ~ '^[A-Z0-9_]{2,32}$'),
    trade_id        bigint        NOT NULL CHECK (trade_id >= 0),
    event_time      timestamptz   NOT NULL,
    price           numeric(24,8) NOT NULL CHECK (price > 0),
    quantity        numeric(24,8) NOT NULL CHECK (quantity > 0),
    quote_quantity  numeric(32,8),
    is_buyer_maker  boolean       NOT NULL,
    exchange        text          NOT NULL DEFAULT 'binance',
    ingested_at     timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket_5m, symbol, trade_id),
    CONSTRAINT btc_ticks_bucket_is_5m_floor
        CHECK (bucket_5m = date_bin('5 minutes', event_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'))
);
CREATE INDEX btc_ticks_symbol_time_idx ON market_data.btc_ticks (symbol, event_time DESC);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        -- The PK leads with the time column: TimescaleDB's default time index is redundant.
        PERFORM create_hypertable('market_data.btc_ticks',
                                  by_range('bucket_5m', INTERVAL '7 days'),
                                  create_default_indexes => false);
        IF current_setting('timescaledb.license', true) = 'timescale' THEN
            ALTER TABLE market_data.btc_ticks SET (
                timescaledb.compress,
                timescaledb.compress_segmentby = 'symbol',
                timescaledb.compress_orderby = 'event_time DESC');
        ELSE
            RAISE NOTICE 'tickstack: timescaledb licence is %, compression not configured',
                current_setting('timescaledb.license', true);
        END IF;
    ELSE
        -- Rows arrive in time order, so BRIN on the bucket is tiny and prunes ranges well.
        CREATE INDEX btc_ticks_bucket_brin ON market_data.btc_ticks USING brin (bucket_5m);
    END IF;
END
$$;

-- The 5-minute aggregate, maintained by the ingest worker for the buckets it touches (a table,
-- not a continuous aggregate, so the embeddings can reference it with a foreign key).
CREATE TABLE market_data.btc_ohlcv_5m (
    symbol          text          NOT NULL CHECK (symbol ~ '^[A-Z0-9_]{2,32}$'),
    bucket_5m       timestamptz   NOT NULL
        CHECK (bucket_5m = date_bin('5 minutes', bucket_5m, TIMESTAMPTZ '2000-01-01 00:00:00+00')),
    open            numeric(24,8) NOT NULL,
    high            numeric(24,8) NOT NULL,
    low             numeric(24,8) NOT NULL,
    close           numeric(24,8) NOT NULL,
    volume          numeric(32,8) NOT NULL CHECK (volume > 0),
    quote_volume    numeric(40,8) NOT NULL,
    trade_count     integer       NOT NULL CHECK (trade_count > 0),
    buy_volume      numeric(32,8) NOT NULL CHECK (buy_volume >= 0 AND buy_volume <= volume),
    first_trade_id  bigint        NOT NULL,
    last_trade_id   bigint        NOT NULL,
    updated_at      timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, bucket_5m),
    CHECK (low <= least(open, close) AND high >= greatest(open, close) AND low > 0),
    CHECK (first_trade_id <= last_trade_id)
);
COMMENT ON COLUMN market_data.btc_ohlcv_5m.buy_volume IS
    'Taker-buy volume (trades whose buyer was not the maker).';
