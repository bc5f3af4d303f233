-- `workers repair`: every registered bucket (from `since`) whose primary copy may fall short of
-- what landing holds — the registry's row count of its object against the bucket's tick digest
-- (refreshed first; no digest row: no ticks), and whether its aggregate row is there.
-- `stale`: a writer marked the digest since the refresh (it is being written: not compared).
SELECT r.market, r.asset, r.bucket_5m, r.s3_uri, (r.metadata->>'row_count')::bigint,
       coalesce(d.tick_count, 0)::bigint, d.market IS NOT NULL AND d.digest IS NULL,
       o.bucket_5m IS NOT NULL
FROM landing.raw_blobs_5m r
LEFT JOIN market_data.tick_digests d
       ON d.market = r.market AND d.symbol = r.asset AND d.bucket_5m = r.bucket_5m
LEFT JOIN market_data.btc_ohlcv_5m o
       ON o.market = r.market AND o.symbol = r.asset AND o.bucket_5m = r.bucket_5m
WHERE (%(since)s::timestamptz IS NULL OR r.bucket_5m >= %(since)s::timestamptz)
  AND (d.digest IS NULL OR d.tick_count <> (r.metadata->>'row_count')::bigint
       OR o.bucket_5m IS NULL)
ORDER BY r.bucket_5m, r.market, r.asset
