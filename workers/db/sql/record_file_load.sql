-- A file's load completed: what it covered and the registry over that range now.
INSERT INTO ingestion.file_loads AS f (market, symbol, file_sha256, file_name, first_bucket,
    last_bucket, registry_fingerprint, rows_read, accepted, quarantined, quarantine_uri)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (market, symbol, file_sha256) DO UPDATE SET file_name = EXCLUDED.file_name,
    first_bucket = EXCLUDED.first_bucket, last_bucket = EXCLUDED.last_bucket,
    registry_fingerprint = EXCLUDED.registry_fingerprint, rows_read = EXCLUDED.rows_read,
    accepted = EXCLUDED.accepted, quarantined = EXCLUDED.quarantined,
    quarantine_uri = EXCLUDED.quarantine_uri, loaded_at = now()
