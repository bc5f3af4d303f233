-- Every tick the primary holds of one bucket of one market's symbol, as landing stores them
-- (landing's column order, by trade id).
SELECT trade_id, event_time, price, quantity, quote_quantity, is_buyer_maker, trade_kind
FROM market_data.btc_ticks
WHERE market = %s AND symbol = %s AND bucket_5m = %s
ORDER BY trade_id
