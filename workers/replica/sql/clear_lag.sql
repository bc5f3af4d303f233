-- Lag rows of buckets proven equal on both servers.
DELETE FROM ingestion.replica_lag
WHERE (market, symbol, bucket_5m) IN (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[]))
