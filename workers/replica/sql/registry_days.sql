-- Per (market, symbol, UTC day): the landing registry rows (the replica holds them as the
-- primary does), as a digest of each bucket's row in time order. Creation and update times are
-- each server's own and left out. Run in UTC (the tick span's text depends on it).
SELECT market, asset, (bucket_5m AT TIME ZONE 'UTC')::date AS day, count(*)::bigint,
       md5(string_agg((extract(epoch FROM bucket_5m))::bigint::text || ':'
                      || md5(ROW(s3_uri, object_size_bytes, ingested_tick_span, metadata)::text),
                      ',' ORDER BY bucket_5m))
FROM landing.raw_blobs_5m
WHERE %(since)s::timestamptz IS NULL OR bucket_5m >= %(since)s::timestamptz
GROUP BY 1, 2, 3
