-- `workers repair`: the time ranges of the ticks' chunks that exist now (TimescaleDB). Retention
-- drops whole chunks older than its cut-off, so the chunk holding the cut-off stays — with up to
-- a chunk interval (7 days) of buckets below it: a bucket there with no ticks lost them.
SELECT range_start, range_end FROM timescaledb_information.chunks
WHERE hypertable_schema = 'market_data' AND hypertable_name = 'btc_ticks'
ORDER BY range_start
