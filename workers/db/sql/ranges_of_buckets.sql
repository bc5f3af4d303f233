-- The trade-id range of the ticks of some buckets of one market's symbol (those without a
-- registry row: unregistered_buckets.sql), where it overlaps [lo, hi].
SELECT bucket_5m, min(trade_id), max(trade_id) FROM market_data.btc_ticks
WHERE market = %(market)s AND symbol = %(symbol)s AND bucket_5m = ANY(%(buckets)s)
GROUP BY bucket_5m
HAVING max(trade_id) >= %(lo)s AND min(trade_id) <= %(hi)s
