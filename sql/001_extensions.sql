-- tickstack: as-admin
-- Extensions, capability-aware: TimescaleDB only where the server preloads it (the primary;
-- never the replica or Amazon RDS), pgvector everywhere, the toolkit where it is installed.
CREATE EXTENSION IF NOT EXISTS vector;

DO $$
BEGIN
    IF current_setting('shared_preload_libraries') ~ '(^|[ ,])timescaledb($|[ ,])'
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb_toolkit') THEN
            CREATE EXTENSION IF NOT EXISTS timescaledb_toolkit;
        END IF;
    END IF;
END
$$;
