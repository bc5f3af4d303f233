-- Which of these buckets of one symbol already hold ticks.
SELECT b FROM unnest(%s::timestamptz[]) b
WHERE EXISTS (SELECT 1 FROM market_data.btc_ticks t WHERE t.bucket_5m = b AND t.symbol = %s)
