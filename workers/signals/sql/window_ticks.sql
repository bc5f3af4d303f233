-- The ticks of some windows of one series, sorted, as CSV for Arrow: times in microseconds since the
-- epoch. Flagged trades (insurance fund, ADL) are no market and are left out.
COPY (SELECT (extract(epoch FROM bucket_5m) * 1000000)::bigint,
             (extract(epoch FROM event_time) * 1000000)::bigint, price::float8,
             quantity::float8, is_buyer_maker FROM market_data.btc_ticks
      WHERE market = {market} AND symbol = {symbol} AND bucket_5m = ANY({buckets})
        AND trade_kind IS NULL
      ORDER BY bucket_5m, event_time, trade_id) TO STDOUT (FORMAT csv)
