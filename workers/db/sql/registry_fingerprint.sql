-- A digest of the registry rows of one market's symbol over [first, last] buckets: bucket,
-- object checksum and URI of each, in order. Equal digests: the same objects are registered.
SELECT count(*)::text || ':' || coalesce(md5(string_agg(
           (extract(epoch FROM bucket_5m) * 1000000)::bigint::text || ' '
           || (metadata->>'sha256') || ' ' || s3_uri, ',' ORDER BY bucket_5m)), '')
FROM landing.raw_blobs_5m
WHERE market = %s AND asset = %s AND bucket_5m BETWEEN %s AND %s
