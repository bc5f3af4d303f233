-- The bucket digests of these (market, symbol, UTC day)s.
SELECT d.market, d.symbol, d.bucket_5m, d.tick_count, d.digest
FROM market_data.tick_digests d
JOIN unnest(%s::text[], %s::text[], %s::date[]) AS k(market, symbol, day)
  ON d.market = k.market AND d.symbol = k.symbol
 AND d.bucket_5m >= k.day::timestamp AT TIME ZONE 'UTC'
 AND d.bucket_5m < (k.day + 1)::timestamp AT TIME ZONE 'UTC'
WHERE %s::timestamptz IS NULL OR d.bucket_5m >= %s::timestamptz
