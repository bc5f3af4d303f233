-- The registry's objects (where, size, SHA-256, ETag when recorded, last update) of every
-- bucket, or of one market / symbol / bucket range when given (NULL: any), in key order.
SELECT market, asset, bucket_5m, s3_uri, object_size_bytes, metadata->>'sha256',
       metadata->>'etag', updated_at
FROM landing.raw_blobs_5m
WHERE (%(market)s::text IS NULL OR market = %(market)s)
  AND (%(symbol)s::text IS NULL OR asset = %(symbol)s)
  AND (%(first)s::timestamptz IS NULL OR bucket_5m >= %(first)s)
  AND (%(last)s::timestamptz IS NULL OR bucket_5m <= %(last)s)
ORDER BY market, asset, bucket_5m
