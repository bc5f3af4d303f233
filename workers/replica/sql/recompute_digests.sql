-- Recompute these stale digests from the ticks: row count and the XOR of a 64-bit hash of each
-- tick's values (PostgreSQL's own hash functions: the same on both servers, which run the same
-- major version on the same byte order). One primary-key range scan per bucket (LATERAL). A
-- digest row that a writer marked again since it was listed (another version) is left stale;
-- one whose bucket holds no ticks any more goes.
WITH s AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::bigint[])
        AS s(market, symbol, bucket_5m, version)),
fresh AS (
    SELECT s.market, s.symbol, s.bucket_5m, s.version, d.n, d.x FROM s CROSS JOIN LATERAL (
        SELECT count(*) AS n,
               bit_xor(hash_record_extended(ROW(t.trade_id, t.event_time, t.price, t.quantity,
                       t.quote_quantity, t.is_buyer_maker, t.trade_kind), 0)) AS x
        FROM market_data.btc_ticks t
        WHERE t.bucket_5m = s.bucket_5m AND t.market = s.market AND t.symbol = s.symbol) d),
upd AS (
    UPDATE market_data.tick_digests g SET tick_count = f.n, digest = f.x FROM fresh f
    WHERE f.n > 0 AND g.market = f.market AND g.symbol = f.symbol
      AND g.bucket_5m = f.bucket_5m AND g.version = f.version
    RETURNING 1),
gone AS (
    DELETE FROM market_data.tick_digests g USING fresh f
    WHERE f.n = 0 AND g.market = f.market AND g.symbol = f.symbol
      AND g.bucket_5m = f.bucket_5m AND g.version = f.version
    RETURNING 1)
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM gone)
