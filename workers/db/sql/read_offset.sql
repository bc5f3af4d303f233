-- A stream's offset: its last accepted trade id and that trade's time.
SELECT last_trade_id, last_event_time FROM ingestion.stream_offsets
WHERE source = %s AND market = %s AND symbol = %s
