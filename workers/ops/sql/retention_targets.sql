SELECT table_name, time_column, landed_via FROM ops.retention_targets
