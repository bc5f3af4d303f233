-- The registry row digests of these (market, symbol, UTC day)s (as registry_days.sql). Run in UTC.
SELECT r.market, r.asset, r.bucket_5m,
       md5(ROW(r.s3_uri, r.object_size_bytes, r.ingested_tick_span, r.metadata)::text)
FROM landing.raw_blobs_5m r
JOIN unnest(%s::text[], %s::text[], %s::date[]) AS k(market, symbol, day)
  ON r.market = k.market AND r.asset = k.symbol
 AND r.bucket_5m >= k.day::timestamp AT TIME ZONE 'UTC'
 AND r.bucket_5m < (k.day + 1)::timestamp AT TIME ZONE 'UTC'
WHERE %s::timestamptz IS NULL OR r.bucket_5m >= %s::timestamptz
