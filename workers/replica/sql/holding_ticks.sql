-- Which of these buckets hold ticks on this server (one primary-key probe each).
SELECT k.market, k.symbol, k.bucket_5m
FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS k(market, symbol, bucket_5m)
WHERE EXISTS (SELECT 1 FROM market_data.btc_ticks t WHERE t.bucket_5m = k.bucket_5m
                AND t.market = k.market AND t.symbol = k.symbol)
