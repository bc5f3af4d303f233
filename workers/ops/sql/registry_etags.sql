-- `workers restore`: the restored registry's buckets and the ETag each was registered with
-- (NULL: registered before issue 19), to find the landing objects it lacks.
SELECT market, asset, bucket_5m, metadata->>'etag' FROM landing.raw_blobs_5m
