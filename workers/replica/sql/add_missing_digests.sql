-- Every bucket that holds ticks gets a (stale) digest row.
INSERT INTO market_data.tick_digests (market, symbol, bucket_5m)
SELECT DISTINCT market, symbol, bucket_5m FROM market_data.btc_ticks
ON CONFLICT (market, symbol, bucket_5m) DO NOTHING
