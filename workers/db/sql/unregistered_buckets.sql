-- Buckets of one market's symbol that hold ticks but no registry row: what the live stream
-- committed to a bucket it has not compacted yet (or a load cut short). Every writer of ticks
-- marks its buckets in market_data.tick_digests (mark_digests_stale.sql) and `replicate`
-- removes the rows of buckets without ticks, so these are the digest rows the registry lacks.
-- Their trade ids have no recorded range: the file ingest's cross-bucket check
-- (workers/db/trade_ids.py) asks their ticks' own range (ranges_of_buckets.sql).
SELECT d.bucket_5m FROM market_data.tick_digests d
WHERE d.market = %(market)s AND d.symbol = %(symbol)s
  AND NOT EXISTS (SELECT 1 FROM landing.raw_blobs_5m r
                  WHERE r.market = d.market AND r.asset = d.symbol AND r.bucket_5m = d.bucket_5m)
