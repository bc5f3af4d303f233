SELECT 1 FROM timescaledb_information.hypertables
WHERE hypertable_schema = %s AND hypertable_name = %s
