-- signals.btc_embeddings: one 256-d vector per closed 5-minute window (seed 004), what followed
-- it in label_snapshot (keys appear once their horizon has data), FK to the aggregate.
-- No ivfflat index here: an index built on an empty table has terrible recall; the embeddings
-- worker builds it after bulk loads (pgvector's guidance).
CREATE TABLE signals.btc_embeddings (
    symbol          text        NOT NULL,
    bucket          timestamptz NOT NULL,
    exchange        text        NOT NULL DEFAULT 'binance',
    feature_vector  vector(256) NOT NULL,
    feature_version smallint    NOT NULL CHECK (feature_version > 0),
    -- Landing checksum the vector was computed from: a late backfill changes it.
    source_sha256   text        NOT NULL CHECK (source_sha256 ~ '^[0-9a-f]{64}$'),
    label_snapshot  jsonb       NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(label_snapshot) = 'object'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, bucket),
    FOREIGN KEY (symbol, bucket)
        REFERENCES market_data.btc_ohlcv_5m (symbol, bucket_5m) ON DELETE CASCADE
);
