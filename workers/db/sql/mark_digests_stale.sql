-- These buckets' ticks change in this transaction: their digests are stale until `replicate`
-- recomputes them from the ticks (market_data.tick_digests, sql/017). Keys come sorted and
-- unique: writers of overlapping buckets lock these rows in the same order.
INSERT INTO market_data.tick_digests AS d (market, symbol, bucket_5m)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[])
ON CONFLICT (market, symbol, bucket_5m) DO UPDATE
    SET tick_count = NULL, digest = NULL, version = d.version + 1
