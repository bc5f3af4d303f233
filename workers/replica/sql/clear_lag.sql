-- Lag rows of buckets proven equal on both servers — unless a dual-write failed on the bucket
-- again since this run started (that failure is newer than the proof).
DELETE FROM ingestion.replica_lag
WHERE (market, symbol, bucket_5m) IN (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[]))
  AND last_failed_at < %s
