-- Per (market, symbol, UTC day): buckets, ticks, stale digests and a digest of the day's
-- bucket digests in time order. Run in UTC.
SELECT market, symbol, (bucket_5m AT TIME ZONE 'UTC')::date AS day, count(*)::bigint,
       coalesce(sum(tick_count), 0)::bigint, count(*) FILTER (WHERE digest IS NULL)::bigint,
       md5(string_agg((extract(epoch FROM bucket_5m))::bigint::text || ':'
                      || coalesce(tick_count::text, '?') || ':' || coalesce(digest::text, '?'),
                      ',' ORDER BY bucket_5m))
FROM market_data.tick_digests
WHERE %(since)s::timestamptz IS NULL OR bucket_5m >= %(since)s::timestamptz
GROUP BY 1, 2, 3
