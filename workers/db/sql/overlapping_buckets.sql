-- Other buckets of one market's symbol whose trade-id range overlaps [lo, hi]: Binance ids grow
-- with time, so this is empty unless an incoming trade id is already stored elsewhere.
SELECT bucket_5m FROM market_data.btc_ohlcv_5m
WHERE market = %s AND symbol = %s AND last_trade_id >= %s AND first_trade_id <= %s
  AND bucket_5m <> ALL(%s)
