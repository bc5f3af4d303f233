SELECT (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
       current_setting('timescaledb.license', true),
       (SELECT extversion FROM pg_extension WHERE extname = 'vector'),
       (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb_toolkit'),
       EXISTS (SELECT 1 FROM pg_available_extensions
               WHERE name = 'timescaledb_toolkit'),
       current_setting('server_version')
