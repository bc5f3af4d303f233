-- This transaction marks the digests of the buckets it writes (sql/017's statement trigger on
-- btc_ticks checks the flag).
SELECT set_config('tickstack.digests_marked', 'on', true)
