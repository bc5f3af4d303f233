-- The ticks of these buckets (rebuilt from landing in the same transaction).
DELETE FROM market_data.btc_ticks t
USING unnest(%s::text[], %s::text[], %s::timestamptz[]) AS k(market, symbol, bucket_5m)
WHERE t.market = k.market AND t.symbol = k.symbol AND t.bucket_5m = k.bucket_5m
