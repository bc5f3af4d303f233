SELECT filename, sha256 FROM ops.schema_migrations ORDER BY filename
