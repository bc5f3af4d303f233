-- The open gaps of one stream, (first, last) missing id.
SELECT first_missing_id, last_missing_id FROM ingestion.stream_gaps WHERE source = %s
AND market = %s AND symbol = %s AND filled_at IS NULL ORDER BY 1
