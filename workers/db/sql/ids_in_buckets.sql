-- Which of these trade ids the given buckets of one market's symbol hold.
SELECT trade_id FROM market_data.btc_ticks
WHERE market = %s AND symbol = %s AND bucket_5m = ANY(%s) AND trade_id = ANY(%s)
