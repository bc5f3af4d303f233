-- Re-count the ids present in every open gap; a gap is filled only when all of them are.
UPDATE ingestion.stream_gaps g
SET present_count = c.n, checked_at = now(),
    filled_at = CASE WHEN c.n = g.last_missing_id - g.first_missing_id + 1 THEN now() END
FROM (
    SELECT o.source, o.symbol, o.first_missing_id, (
        SELECT count(*) FROM market_data.btc_ticks t
        WHERE t.symbol = o.symbol
          AND t.bucket_5m >= date_bin('5 minutes', o.after_time, TIMESTAMPTZ '2000-01-01 00:00+00')
          AND t.bucket_5m <= date_bin('5 minutes', o.before_time, TIMESTAMPTZ '2000-01-01 00:00+00')
          AND t.trade_id BETWEEN o.first_missing_id AND o.last_missing_id) AS n
    FROM ingestion.stream_gaps o
    WHERE o.filled_at IS NULL AND (%(symbol)s::text IS NULL OR o.symbol = %(symbol)s)
) c
WHERE g.source = c.source AND g.symbol = c.symbol AND g.first_missing_id = c.first_missing_id
