-- bucket -> registered SHA-256, for the given buckets of one market's symbol.
SELECT bucket_5m, metadata->>'sha256' FROM landing.raw_blobs_5m
WHERE market = %s AND asset = %s AND bucket_5m = ANY(%s)
