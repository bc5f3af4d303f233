-- Which of these buckets of one market's symbol already hold ticks. One primary-key probe per
-- bucket (LATERAL ... LIMIT 1 in the key's order): a semi-join would let the planner, which
-- sees a chunk being loaded as nearly empty, hash the symbol's every tick on each call — a
-- cost that grew with the chunk (measured: 0.02 s at the start of a day, 0.9 s at its end).
SELECT b FROM unnest(%s::timestamptz[]) b
CROSS JOIN LATERAL (
    SELECT 1 FROM market_data.btc_ticks t
    WHERE t.bucket_5m = b AND t.market = %s AND t.symbol = %s
    ORDER BY t.bucket_5m, t.market, t.symbol, t.trade_id
    LIMIT 1) AS held
