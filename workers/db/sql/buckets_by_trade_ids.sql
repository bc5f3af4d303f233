-- Buckets of one market's symbol whose trade-id range overlaps [lo, hi], with that range: from
-- the aggregate, and from the registry (which also has a bucket of flagged trades only, without
-- an aggregate row; its expressions match the index of sql/023). Binance ids grow with time, so
-- besides a flush's own buckets this is empty unless an incoming id is already stored elsewhere.
SELECT bucket_5m, first_trade_id, last_trade_id FROM market_data.btc_ohlcv_5m
WHERE market = %(market)s AND symbol = %(symbol)s
  AND last_trade_id >= %(lo)s AND first_trade_id <= %(hi)s
UNION
SELECT bucket_5m, (metadata->'first_trade_id')::numeric::bigint,
       (metadata->'last_trade_id')::numeric::bigint
FROM landing.raw_blobs_5m
WHERE market = %(market)s AND asset = %(symbol)s
  AND jsonb_typeof(metadata->'last_trade_id') = 'number'
  AND jsonb_typeof(metadata->'first_trade_id') = 'number'
  AND (metadata->'last_trade_id')::numeric >= %(lo)s::numeric
  AND (metadata->'first_trade_id')::numeric <= %(hi)s::numeric
