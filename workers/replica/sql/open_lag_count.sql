SELECT count(*) FROM ingestion.replica_lag
