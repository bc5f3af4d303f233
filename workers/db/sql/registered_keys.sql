-- Where the registry says these buckets' landing objects are.
SELECT bucket_5m, s3_uri FROM landing.raw_blobs_5m
WHERE market = %s AND asset = %s AND bucket_5m = ANY(%s)
