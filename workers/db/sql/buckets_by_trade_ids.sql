-- Buckets of one market's symbol whose trade-id range overlaps [lo, hi], with that range: from
-- the aggregate, and from the registry for a bucket that has none (flagged trades only). Binance
-- ids grow with time, so besides a flush's own buckets this is empty unless an incoming id is
-- already stored elsewhere.
SELECT bucket_5m, first_trade_id, last_trade_id FROM market_data.btc_ohlcv_5m
WHERE market = %(market)s AND symbol = %(symbol)s
  AND last_trade_id >= %(lo)s AND first_trade_id <= %(hi)s
UNION
SELECT bucket_5m, (metadata->>'first_trade_id')::bigint, (metadata->>'last_trade_id')::bigint
FROM landing.raw_blobs_5m
WHERE market = %(market)s AND asset = %(symbol)s
  AND (metadata->>'last_trade_id')::bigint >= %(lo)s
  AND (metadata->>'first_trade_id')::bigint <= %(hi)s
