-- Buckets a replica write did not reach: `workers replicate` catches them up from landing.
INSERT INTO ingestion.replica_lag AS l (market, symbol, bucket_5m, last_error)
SELECT m, s, b, %s FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS u(m, s, b)
ON CONFLICT (market, symbol, bucket_5m) DO UPDATE
    SET last_failed_at = now(), failures = l.failures + 1, last_error = EXCLUDED.last_error
