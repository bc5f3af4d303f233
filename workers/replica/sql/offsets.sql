-- Every stream/file offset this server holds.
SELECT source, market, symbol, last_trade_id, last_event_time FROM ingestion.stream_offsets
ORDER BY 1, 2, 3
