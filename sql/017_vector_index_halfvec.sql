-- The embeddings index, as measured at 10k, 100k and 1M generated windows (bench/vectors.py):
-- * ivfflat over `feature_vector::halfvec(256)`: half the bytes of vector(256), so each probed
--   list costs about half as much to read, and the same neighbours within float16 rounding
--   (the query re-ranks its candidates by the exact float distance).
-- * Build new, then swap, in two steps: build_embedding_index creates and records the new
--   index in one transaction (CREATE INDEX takes a SHARE lock: readers go on using the old
--   index, only writers wait); drop_replaced_embedding_indexes then drops the old one in a
--   short transaction of its own with a lock_timeout: DROP INDEX needs an ACCESS EXCLUSIVE
--   lock on the table, and every reader queues behind it for as long as it is held or waited
--   for — never for a build, and never longer than lock_timeout.
-- * Compare-and-swap: a build happens only if the index in use is still the one the caller saw
--   (two embed workers at once build once); an advisory lock serialises builders.
-- The embeddings worker may not run DDL: both functions run as the table's owner.
ALTER TABLE signals.vector_index_builds
    ADD COLUMN kind text NOT NULL DEFAULT 'vector' CHECK (kind IN ('vector', 'halfvec')),
    ADD COLUMN bytes bigint CHECK (bytes >= 0),
    ADD COLUMN parallel_workers integer CHECK (parallel_workers >= 0);

DROP FUNCTION signals.build_embedding_index(integer);

CREATE FUNCTION signals.build_embedding_index(p_lists integer, p_expected text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
SET maintenance_work_mem = '512MB'
AS $$
DECLARE
    new_name text := 'btc_embeddings_ivfflat_' || to_char(clock_timestamp(), 'YYYYMMDDHH24MISSUS');
    in_use text;
    n bigint;
    workers integer;
    t0 timestamptz;
BEGIN
    IF p_lists IS NULL OR p_lists < 1 OR p_lists > 100000 THEN
        RAISE EXCEPTION 'lists must be between 1 and 100000, not %', p_lists
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('signals.build_embedding_index'));
    SELECT b.index_name INTO in_use
    FROM signals.vector_index_builds b
    JOIN pg_class c ON c.relname = b.index_name
    JOIN pg_namespace s ON s.oid = c.relnamespace AND s.nspname = 'signals'
    ORDER BY b.built_at DESC, b.index_name DESC LIMIT 1;
    IF in_use IS DISTINCT FROM p_expected THEN
        RETURN NULL;  -- another builder got there first: the caller reads the index in use
    END IF;
    -- A rebuild runs while readers use the old index: leave them the other core(s).
    workers := CASE WHEN in_use IS NULL
                    THEN current_setting('max_parallel_maintenance_workers')::integer ELSE 0 END;
    PERFORM set_config('max_parallel_maintenance_workers', workers::text, true);
    t0 := clock_timestamp();
    SELECT count(*) INTO n FROM signals.btc_embeddings;
    EXECUTE format('CREATE INDEX %I ON signals.btc_embeddings USING ivfflat '
                   '((feature_vector::halfvec(256)) halfvec_cosine_ops) WITH (lists = %s)',
                   new_name, p_lists);
    INSERT INTO signals.vector_index_builds
        (index_name, rows, lists, seconds, replaced, kind, bytes, parallel_workers)
    VALUES (new_name, n, p_lists, extract(epoch FROM clock_timestamp() - t0), in_use, 'halfvec',
            pg_relation_size(format('signals.%I', new_name)::regclass), workers);
    ANALYZE signals.btc_embeddings;  -- SHARE UPDATE EXCLUSIVE: readers are not blocked
    RETURN new_name;
END
$$;

CREATE FUNCTION signals.drop_replaced_embedding_indexes() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
SET lock_timeout = '1s'
AS $$
DECLARE
    in_use text;
    old text;
    dropped integer := 0;
BEGIN
    -- Never beside a build: its new index would look like an old one once committed. NULL:
    -- a build holds the lock (the caller tries again later).
    IF NOT pg_try_advisory_xact_lock(hashtext('signals.build_embedding_index')) THEN
        RETURN NULL;
    END IF;
    SELECT b.index_name INTO in_use
    FROM signals.vector_index_builds b
    JOIN pg_class c ON c.relname = b.index_name
    JOIN pg_namespace s ON s.oid = c.relnamespace AND s.nspname = 'signals'
    ORDER BY b.built_at DESC, b.index_name DESC LIMIT 1;
    IF in_use IS NULL THEN
        RETURN 0;
    END IF;
    FOR old IN
        SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'signals.btc_embeddings'::regclass
          AND c.relname LIKE 'btc\_embeddings\_ivfflat\_%' AND c.relname <> in_use
    LOOP
        EXECUTE format('DROP INDEX signals.%I', old);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;

REVOKE ALL ON FUNCTION signals.build_embedding_index(integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION signals.drop_replaced_embedding_indexes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION signals.build_embedding_index(integer, text) TO tickstack_embed;
GRANT EXECUTE ON FUNCTION signals.drop_replaced_embedding_indexes() TO tickstack_embed;
