-- The newest `limit` 5-minute bars of one instrument, oldest first (the report's OHLCV figure).
SELECT bucket_5m, open, high, low, close, volume, buy_volume
FROM (SELECT * FROM market_data.btc_ohlcv_5m
      WHERE market = %s AND symbol = %s
      ORDER BY bucket_5m DESC LIMIT %s) t
ORDER BY bucket_5m
