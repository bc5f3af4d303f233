-- A trade-id gap the stream saw (kept until every id in it is present).
INSERT INTO ingestion.stream_gaps (source, symbol, first_missing_id, last_missing_id,
    after_time, before_time)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
