-- Per (symbol, 5-minute bucket): row count and an md5 over the canonical text of every tick,
-- ordered by trade id. Run in UTC with ISO dates so both servers render values identically.
SELECT symbol, bucket_5m, count(*)::bigint,
       md5(string_agg(trade_id::text || ':' || event_time::text || ':' || price::text || ':'
                      || quantity::text || ':' || coalesce(quote_quantity::text, '-') || ':'
                      || is_buyer_maker::text, ',' ORDER BY trade_id))
FROM market_data.btc_ticks
WHERE (%(since)s::timestamptz IS NULL OR bucket_5m >= %(since)s::timestamptz)
GROUP BY symbol, bucket_5m
