-- landing.raw_blobs_5m: the registry of landing objects, the source of truth downstream.
-- One object per (asset, 5-minute bucket); PK (asset, bucket_5m) as DESIGN.md settles.
CREATE TABLE landing.raw_blobs_5m (
    asset               text        NOT NULL CHECK (asset ~ '^[A-Z0-9_]{2,32}$'),
    bucket_5m           timestamptz NOT NULL
        CHECK (bucket_5m = date_bin('5 minutes', bucket_5m, TIMESTAMPTZ '2000-01-01 00:00:00+00')),
    s3_uri              text        NOT NULL CHECK (s3_uri ~ '^s3://[a-z0-9.-]+/.+'),
    object_size_bytes   bigint      NOT NULL CHECK (object_size_bytes > 0),
    ingested_tick_span  tstzrange   NOT NULL CHECK (NOT isempty(ingested_tick_span)),
    metadata            jsonb       NOT NULL CHECK (
        metadata ?& ARRAY['sha256', 'row_count', 'schema_version', 'producer']
        AND metadata->>'sha256' ~ '^[0-9a-f]{64}$'
        AND jsonb_typeof(metadata->'row_count') = 'number'
        AND (metadata->>'row_count')::bigint > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (asset, bucket_5m),
    -- The object only holds ticks of its own bucket.
    CHECK (ingested_tick_span <@ tstzrange(bucket_5m, bucket_5m + INTERVAL '5 minutes', '[)'))
);
COMMENT ON TABLE landing.raw_blobs_5m IS
    'One landing object (Parquet) per asset and 5-minute bucket: URI, size, SHA-256, rows, span.';
