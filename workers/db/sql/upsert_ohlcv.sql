-- The bucket's 5-minute aggregate of ordinary trades, computed from its whole landing object;
-- unchanged values are not rewritten (every column is compared: a bar wrong in one column alone,
-- e.g. quote_volume, is corrected by the next recompute).
INSERT INTO market_data.btc_ohlcv_5m AS o (market, symbol, bucket_5m, open, high, low, close,
    volume, quote_volume, trade_count, buy_volume, first_trade_id, last_trade_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (market, symbol, bucket_5m) DO UPDATE SET open = EXCLUDED.open,
    high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    volume = EXCLUDED.volume, quote_volume = EXCLUDED.quote_volume,
    trade_count = EXCLUDED.trade_count, buy_volume = EXCLUDED.buy_volume,
    first_trade_id = EXCLUDED.first_trade_id, last_trade_id = EXCLUDED.last_trade_id,
    updated_at = now()
WHERE (o.open, o.high, o.low, o.close, o.trade_count, o.volume, o.quote_volume, o.buy_volume,
       o.first_trade_id, o.last_trade_id)
    IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close,
                      EXCLUDED.trade_count, EXCLUDED.volume, EXCLUDED.quote_volume,
                      EXCLUDED.buy_volume, EXCLUDED.first_trade_id, EXCLUDED.last_trade_id)
