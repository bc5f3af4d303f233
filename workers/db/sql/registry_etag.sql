-- The ETag of the object stored again for a registry row, only while the row still vouches for
-- the same bytes (SHA-256).
UPDATE landing.raw_blobs_5m SET metadata = metadata || jsonb_build_object('etag', %s::text)
WHERE market = %s AND asset = %s AND bucket_5m = %s AND metadata->>'sha256' = %s
