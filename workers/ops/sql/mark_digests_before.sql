-- Ticks before the cutoff are removed in this transaction: their buckets' digests are stale
-- (recomputed by `replicate`, which drops the digests of buckets left without ticks), and the
-- statement trigger on btc_ticks knows the change is accounted for (sql/017).
WITH marked AS (
    UPDATE market_data.tick_digests SET tick_count = NULL, digest = NULL, version = version + 1
    WHERE bucket_5m < %s AND digest IS NOT NULL RETURNING 1)
SELECT set_config('tickstack.digests_marked', 'on', true), (SELECT count(*) FROM marked)
