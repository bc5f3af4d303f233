-- Registry rows of rebuilt buckets the primary has none for (e.g. a stream bucket whose
-- compaction a point-in-time restore rolled back): the replica follows the primary.
DELETE FROM landing.raw_blobs_5m r
USING unnest(%s::text[], %s::text[], %s::timestamptz[]) AS k(market, symbol, bucket_5m)
WHERE r.market = k.market AND r.asset = k.symbol AND r.bucket_5m = k.bucket_5m
