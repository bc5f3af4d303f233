INSERT INTO ops.schema_migrations (filename, sha256, duration_ms, capabilities)
VALUES (%s, %s, %s, %s)
