-- What these buckets hold now: the stored tick digest (count, digest; NULL while stale — the
-- caller refreshed the stale ones just before), and the registry and aggregate row digests (as
-- registry_buckets.sql, ohlcv_buckets.sql). One statement: one snapshot. Run in UTC.
WITH k AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS k(market, symbol, bucket_5m))
SELECT k.market, k.symbol, k.bucket_5m, d.market IS NOT NULL, d.tick_count, d.digest, r.h, o.h
FROM k
LEFT JOIN market_data.tick_digests d
  ON d.market = k.market AND d.symbol = k.symbol AND d.bucket_5m = k.bucket_5m
LEFT JOIN LATERAL (
    SELECT md5(ROW(r.s3_uri, r.object_size_bytes, r.ingested_tick_span, r.metadata)::text) AS h
    FROM landing.raw_blobs_5m r
    WHERE r.market = k.market AND r.asset = k.symbol AND r.bucket_5m = k.bucket_5m) r ON true
LEFT JOIN LATERAL (
    SELECT md5(ROW(o.open, o.high, o.low, o.close, o.volume, o.quote_volume, o.trade_count,
                   o.buy_volume, o.first_trade_id, o.last_trade_id)::text) AS h
    FROM market_data.btc_ohlcv_5m o
    WHERE o.market = k.market AND o.symbol = k.symbol AND o.bucket_5m = k.bucket_5m) o ON true
