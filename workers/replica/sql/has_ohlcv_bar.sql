SELECT 1 FROM market_data.btc_ohlcv_5m WHERE market = %s AND
symbol = %s AND bucket_5m = %s
