-- Retention: which tables tickstack manages, the owner-only operations the retention worker
-- may ask for, and the shipped default jobs.
--
-- The retention login may DELETE (batched, on plain PostgreSQL) but not run DDL; dropping or
-- compressing TimescaleDB chunks needs the table's owner. These SECURITY DEFINER functions do
-- exactly that and nothing more: only for a registered table, only chunks entirely older than
-- a cutoff. (plpgsql bodies are checked when called: they exist on the replica too, unused.)
CREATE TABLE ops.retention_targets (
    table_name  text PRIMARY KEY CHECK (table_name ~ '^(market_data|signals)\.[a-z_][a-z0-9_]*$'),
    time_column text NOT NULL CHECK (time_column ~ '^[a-z_][a-z0-9_]*$'),
    -- Rows of this table are proven to be in landing by the registry before they are removed.
    landed_via  text NOT NULL CHECK (landed_via IN ('ticks', 'buckets'))
);
INSERT INTO ops.retention_targets VALUES
    ('market_data.btc_ticks', 'bucket_5m', 'ticks'),
    ('market_data.btc_ohlcv_5m', 'bucket_5m', 'buckets');
GRANT SELECT ON ops.retention_targets TO tickstack_retention, tickstack_reader;

CREATE FUNCTION ops.retention_chunks(p_table text, p_older_than timestamptz)
RETURNS TABLE (chunk text, range_start timestamptz, range_end timestamptz, rows bigint,
               is_compressed boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    c record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ops.retention_targets t WHERE t.table_name = p_table) THEN
        RAISE EXCEPTION '% is not a table tickstack manages', p_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR c IN
        SELECT ch.chunk_schema, ch.chunk_name, ch.range_start AS rs, ch.range_end AS re,
               ch.is_compressed AS comp
        FROM timescaledb_information.chunks ch
        WHERE format('%I.%I', ch.hypertable_schema, ch.hypertable_name) = p_table
          AND ch.range_end <= p_older_than
        ORDER BY ch.range_start
    LOOP
        chunk := format('%I.%I', c.chunk_schema, c.chunk_name);
        range_start := c.rs;
        range_end := c.re;
        is_compressed := c.comp;
        EXECUTE format('SELECT count(*) FROM %I.%I', c.chunk_schema, c.chunk_name) INTO rows;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE FUNCTION ops.retention_drop_chunks(p_table text, p_older_than timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ops.retention_targets t WHERE t.table_name = p_table) THEN
        RAISE EXCEPTION '% is not a table tickstack manages', p_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT public.drop_chunks(p_table::regclass, older_than => p_older_than);
END
$$;

CREATE FUNCTION ops.retention_compress_chunk(p_table text, p_chunk text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM ops.retention_targets t
        JOIN timescaledb_information.chunks ch
          ON format('%I.%I', ch.hypertable_schema, ch.hypertable_name) = t.table_name
        WHERE t.table_name = p_table AND format('%I.%I', ch.chunk_schema, ch.chunk_name) = p_chunk
    ) THEN
        RAISE EXCEPTION '% is not a chunk of a table tickstack manages', p_chunk
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN public.compress_chunk(p_chunk::regclass, if_not_compressed => true)::text;
END
$$;

REVOKE ALL ON FUNCTION ops.retention_chunks(text, timestamptz),
    ops.retention_drop_chunks(text, timestamptz),
    ops.retention_compress_chunk(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ops.retention_chunks(text, timestamptz),
    ops.retention_drop_chunks(text, timestamptz),
    ops.retention_compress_chunk(text, text) TO tickstack_retention;

-- Defaults: ticks are compressed after 30 days (seed 004) where licensed and kept; the
-- aggregate is kept ten years. Operators change these rows, not this file.
INSERT INTO ops.retention_jobs (job_name, hypertable, policy) VALUES
    ('btc_ticks', 'market_data.btc_ticks', '{"compress_after": "30 days"}'),
    ('btc_ohlcv_5m', 'market_data.btc_ohlcv_5m', '{"drop_after": "10 years"}')
ON CONFLICT (job_name) DO NOTHING;
