-- bucket -> registered SHA-256, for the given buckets of one symbol.
SELECT bucket_5m, metadata->>'sha256' FROM landing.raw_blobs_5m
WHERE asset = %s AND bucket_5m = ANY(%s)
