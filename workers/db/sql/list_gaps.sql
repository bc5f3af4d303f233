-- Every recorded gap of one symbol (NULL: all), open ones first.
SELECT source, symbol, first_missing_id, last_missing_id, after_time, before_time, detected_at,
       present_count, checked_at, filled_at
FROM ingestion.stream_gaps
WHERE (%(symbol)s::text IS NULL OR symbol = %(symbol)s)
ORDER BY filled_at IS NOT NULL, symbol, first_missing_id
