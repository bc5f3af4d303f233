-- What these buckets hold right now, computed from the rows themselves (no stored digest, so
-- never "not recomputed yet"): tick count and digest (as recompute_digests.sql), and the
-- registry and aggregate row digests (as registry_buckets.sql, ohlcv_buckets.sql). One
-- statement: one snapshot. Run in UTC.
WITH k AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS k(market, symbol, bucket_5m))
SELECT k.market, k.symbol, k.bucket_5m, t.n, t.x, r.h, o.h
FROM k
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           bit_xor(hash_record_extended(ROW(t.trade_id, t.event_time, t.price, t.quantity,
                   t.quote_quantity, t.is_buyer_maker, t.trade_kind), 0)) AS x
    FROM market_data.btc_ticks t
    WHERE t.bucket_5m = k.bucket_5m AND t.market = k.market AND t.symbol = k.symbol) t
LEFT JOIN LATERAL (
    SELECT md5(ROW(r.s3_uri, r.object_size_bytes, r.ingested_tick_span, r.metadata)::text) AS h
    FROM landing.raw_blobs_5m r
    WHERE r.market = k.market AND r.asset = k.symbol AND r.bucket_5m = k.bucket_5m) r ON true
LEFT JOIN LATERAL (
    SELECT md5(ROW(o.open, o.high, o.low, o.close, o.volume, o.quote_volume, o.trade_count,
                   o.buy_volume, o.first_trade_id, o.last_trade_id)::text) AS h
    FROM market_data.btc_ohlcv_5m o
    WHERE o.market = k.market AND o.symbol = k.symbol AND o.bucket_5m = k.bucket_5m) o ON true
