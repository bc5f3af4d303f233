-- Per (market, symbol, UTC day): the 5-minute aggregate rows, as a digest of each bucket's row
-- in time order (update times are each server's own and left out).
SELECT market, symbol, (bucket_5m AT TIME ZONE 'UTC')::date AS day, count(*)::bigint,
       md5(string_agg((extract(epoch FROM bucket_5m))::bigint::text || ':'
                      || md5(ROW(open, high, low, close, volume, quote_volume, trade_count,
                                 buy_volume, first_trade_id, last_trade_id)::text),
                      ',' ORDER BY bucket_5m))
FROM market_data.btc_ohlcv_5m
WHERE %(since)s::timestamptz IS NULL OR bucket_5m >= %(since)s::timestamptz
GROUP BY 1, 2, 3
