-- Which of these trade ids one bucket of one market's symbol holds (primary-key probes).
SELECT trade_id FROM market_data.btc_ticks
WHERE market = %s AND symbol = %s AND bucket_5m = %s AND trade_id = ANY(%s)
