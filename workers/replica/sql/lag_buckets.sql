-- Buckets the dual-write recorded as missed on the replica (ingestion.replica_lag, primary).
SELECT market, symbol, bucket_5m FROM ingestion.replica_lag ORDER BY 1, 2, 3
