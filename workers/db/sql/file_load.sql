-- The completed load of a file with this SHA-256 into one market's symbol, if any.
SELECT file_name, first_bucket, last_bucket, registry_fingerprint, rows_read, accepted,
       quarantined, quarantine_uri, loaded_at
FROM ingestion.file_loads
WHERE market = %s AND symbol = %s AND file_sha256 = %s
