SELECT s3_uri FROM landing.raw_blobs_5m WHERE market = %s AND
asset = %s AND bucket_5m = %s
