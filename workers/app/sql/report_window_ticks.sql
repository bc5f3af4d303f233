-- One window's trades in order (the report's price path of a window).
SELECT event_time, price FROM market_data.btc_ticks
WHERE market = %s AND symbol = %s AND bucket_5m = %s AND trade_kind IS NULL
ORDER BY event_time, trade_id
