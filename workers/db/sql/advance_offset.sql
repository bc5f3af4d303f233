-- Offsets only move forward (the table's trigger refuses a step back; this skips it quietly).
INSERT INTO ingestion.stream_offsets AS so (source, symbol, last_trade_id, last_event_time)
VALUES (%s, %s, %s, %s)
ON CONFLICT (source, symbol) DO UPDATE
    SET last_trade_id = EXCLUDED.last_trade_id,
        last_event_time = EXCLUDED.last_event_time, updated_at = now()
    WHERE EXCLUDED.last_trade_id > so.last_trade_id
