-- 5-minute closes of one instrument from a bucket to an end (what followed a window).
SELECT bucket_5m, close FROM market_data.btc_ohlcv_5m
WHERE market = %s AND symbol = %s AND bucket_5m >= %s AND bucket_5m <= %s
ORDER BY bucket_5m
