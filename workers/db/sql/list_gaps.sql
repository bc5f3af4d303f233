-- Every recorded gap of one symbol and market (NULL: all), open ones first.
SELECT source, market, symbol, first_missing_id, last_missing_id, after_time, before_time,
       detected_at, present_count, checked_at, filled_at
FROM ingestion.stream_gaps
WHERE (%(symbol)s::text IS NULL OR symbol = %(symbol)s)
  AND (%(market)s::text IS NULL OR market = %(market)s)
ORDER BY filled_at IS NOT NULL, market, symbol, first_missing_id
