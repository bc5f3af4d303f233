-- tickstack: as-admin
-- pg_prewarm, so the embeddings worker can load the ivfflat index it just built (or keeps) into
-- shared_buffers: a kNN query then reads its probed lists from memory instead of the OS cache
-- or disk (bench/vectors.py: at 1M vectors, p95 47.8 ms cold vs 23.8 ms prewarmed). pg_prewarm()
-- checks SELECT on the relation, which the embed role has; nothing else is granted. Where the
-- server does not ship it, or the migrating login may not create it (a managed replica's admin
-- is no superuser; no kNN query runs there), nothing happens and the worker skips the prewarm.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_prewarm') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_prewarm WITH SCHEMA public;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'tickstack: pg_prewarm not created (%): the vector index is not prewarmed',
                SQLERRM;
        END;
    END IF;
END
$$;
