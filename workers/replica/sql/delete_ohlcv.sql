-- Aggregate rows of rebuilt buckets whose landing object has no ordinary trade (or no object).
DELETE FROM market_data.btc_ohlcv_5m o
USING unnest(%s::text[], %s::text[], %s::timestamptz[]) AS k(market, symbol, bucket_5m)
WHERE o.market = k.market AND o.symbol = k.symbol AND o.bucket_5m = k.bucket_5m
