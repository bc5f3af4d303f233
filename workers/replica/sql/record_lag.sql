-- Buckets a replica write did not reach: `workers replicate` catches them up from landing.
INSERT INTO ingestion.replica_lag AS l (symbol, bucket_5m, last_error)
SELECT s, b, %s FROM unnest(%s::text[], %s::timestamptz[]) AS u(s, b)
ON CONFLICT (symbol, bucket_5m) DO UPDATE
    SET last_failed_at = now(), failures = l.failures + 1, last_error = EXCLUDED.last_error
