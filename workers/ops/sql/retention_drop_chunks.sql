SELECT * FROM ops.retention_drop_chunks(%s, %s)
