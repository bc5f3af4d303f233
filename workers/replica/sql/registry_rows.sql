-- The primary's registry rows of these buckets: what the replica's must equal (span and
-- metadata as text, cast back on the replica).
SELECT r.market, r.asset, r.bucket_5m, r.s3_uri, r.object_size_bytes,
       r.ingested_tick_span::text, r.metadata::text
FROM landing.raw_blobs_5m r
JOIN unnest(%s::text[], %s::text[], %s::timestamptz[]) AS k(market, symbol, bucket_5m)
  ON r.market = k.market AND r.asset = k.symbol AND r.bucket_5m = k.bucket_5m
