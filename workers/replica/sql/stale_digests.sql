-- Buckets whose digest is stale (from `since`, when given), in time order.
SELECT market, symbol, bucket_5m, version FROM market_data.tick_digests
WHERE digest IS NULL AND (%(since)s::timestamptz IS NULL OR bucket_5m >= %(since)s::timestamptz)
ORDER BY bucket_5m, market, symbol
