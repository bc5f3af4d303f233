-- The aggregate row digests of these (market, symbol, UTC day)s (as ohlcv_days.sql).
SELECT o.market, o.symbol, o.bucket_5m,
       md5(ROW(o.open, o.high, o.low, o.close, o.volume, o.quote_volume, o.trade_count,
               o.buy_volume, o.first_trade_id, o.last_trade_id)::text)
FROM market_data.btc_ohlcv_5m o
JOIN unnest(%s::text[], %s::text[], %s::date[]) AS k(market, symbol, day)
  ON o.market = k.market AND o.symbol = k.symbol
 AND o.bucket_5m >= k.day::timestamp AT TIME ZONE 'UTC'
 AND o.bucket_5m < (k.day + 1)::timestamp AT TIME ZONE 'UTC'
WHERE %s::timestamptz IS NULL OR o.bucket_5m >= %s::timestamptz
