-- ingestion.replica_lag (kept on the PRIMARY): which 5-minute buckets the dual-write replica
-- is missing because a best-effort write failed, timed out or was skipped (circuit breaker
-- open). Written in its own transaction, never in the primary's ingest transaction;
-- `workers replicate` deletes a row once that bucket is proven equal on both servers.
CREATE TABLE ingestion.replica_lag (
    symbol           text        NOT NULL CHECK (symbol ~ '^[A-Z0-9_]{2,32}$'),
    bucket_5m        timestamptz NOT NULL
        CHECK (bucket_5m = date_bin('5 minutes', bucket_5m, TIMESTAMPTZ '2000-01-01 00:00:00+00')),
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_failed_at   timestamptz NOT NULL DEFAULT now(),
    failures         integer     NOT NULL DEFAULT 1 CHECK (failures > 0),
    last_error       text        NOT NULL CHECK (length(last_error) <= 1000),
    PRIMARY KEY (symbol, bucket_5m)
);
COMMENT ON TABLE ingestion.replica_lag IS
    'Buckets the dual-write replica misses (best-effort write failed); cleared by replicate.';

GRANT SELECT, INSERT, UPDATE, DELETE ON ingestion.replica_lag TO tickstack_ingest;
GRANT SELECT ON ingestion.replica_lag TO tickstack_reader;
