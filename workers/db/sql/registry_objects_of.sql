-- The registry's objects of the given (market, asset, bucket) triples (re-read under locks).
SELECT r.market, r.asset, r.bucket_5m, r.s3_uri, r.object_size_bytes, r.metadata->>'sha256',
       r.metadata->>'etag', r.updated_at
FROM landing.raw_blobs_5m r
JOIN unnest(%s::text[], %s::text[], %s::timestamptz[]) AS b (market, asset, bucket_5m)
  USING (market, asset, bucket_5m)
