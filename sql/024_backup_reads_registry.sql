-- `backup --check` also says whether landing still holds every object the registry vouches for
-- (issue 27, item 4): a restore replays landing after the backup, so "healthy" covers both. The
-- backup login reads the registry for that — the registry only, no ticks — and only on the
-- primary (the server with TimescaleDB), where backups are taken.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        GRANT USAGE ON SCHEMA landing TO tickstack_backup;
        GRANT SELECT ON landing.raw_blobs_5m TO tickstack_backup;
    END IF;
END
$$;
