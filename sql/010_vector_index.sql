-- The ivfflat index lifecycle (pgvector's guidance): no index while the table is small (exact
-- scan is fast and an index trained on few rows has poor recall); built after bulk loads with
-- `lists` from the row count; rebuilt — new index first, then the old one dropped — when the
-- table has doubled. The embeddings worker may not run DDL, so it calls this function, which
-- runs as the table's owner, validates its input and records every build.
CREATE TABLE signals.vector_index_builds (
    index_name  text        PRIMARY KEY,
    rows        bigint      NOT NULL CHECK (rows >= 0),
    lists       integer     NOT NULL CHECK (lists > 0),
    seconds     numeric     NOT NULL CHECK (seconds >= 0),
    replaced    text,
    built_at    timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION signals.build_embedding_index(p_lists integer) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
SET maintenance_work_mem = '256MB'
AS $$
DECLARE
    new_name text := 'btc_embeddings_ivfflat_' || to_char(clock_timestamp(), 'YYYYMMDDHH24MISSUS');
    old_name text;
    n bigint;
    t0 timestamptz := clock_timestamp();
BEGIN
    IF p_lists IS NULL OR p_lists < 1 OR p_lists > 100000 THEN
        RAISE EXCEPTION 'lists must be between 1 and 100000, not %', p_lists
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT count(*) INTO n FROM signals.btc_embeddings;
    SELECT c.relname INTO old_name
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = 'signals.btc_embeddings'::regclass
      AND c.relname LIKE 'btc\_embeddings\_ivfflat\_%';
    -- Readers keep using the old index while the new one builds (SHARE lock: writes wait).
    EXECUTE format('CREATE INDEX %I ON signals.btc_embeddings '
                   'USING ivfflat (feature_vector vector_cosine_ops) WITH (lists = %s)',
                   new_name, p_lists);
    IF old_name IS NOT NULL THEN
        EXECUTE format('DROP INDEX signals.%I', old_name);
    END IF;
    ANALYZE signals.btc_embeddings;
    INSERT INTO signals.vector_index_builds (index_name, rows, lists, seconds, replaced)
    VALUES (new_name, n, p_lists, extract(epoch FROM clock_timestamp() - t0), old_name);
    RETURN new_name;
END
$$;
REVOKE ALL ON FUNCTION signals.build_embedding_index(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION signals.build_embedding_index(integer) TO tickstack_embed;
GRANT SELECT ON signals.vector_index_builds TO tickstack_embed, tickstack_reader;
GRANT SELECT ON signals.btc_embeddings TO tickstack_reader;
