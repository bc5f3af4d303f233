-- Adversarial review of issue 27, item 8: the "landing holds it" guard lived only in the
-- Python caller (workers/ops/retention.py, landed_cutoff). ops.retention_drop_chunks is
-- SECURITY DEFINER and the retention login may call it with any cut-off: on the primary,
-- `SELECT ops.retention_drop_chunks('market_data.btc_ticks', 'infinity')` dropped every chunk,
-- ticks landing does not hold (the live stream's, not compacted yet) included — the very
-- bypass 021 closed for DELETE. The function now enforces the guard itself:
--   * a cut-off in the future (no policy's drop_after is shorter than a day) is refused;
--   * a cut-off above the oldest bucket landing does not account for (ticks: fewer rows in the
--     registry than in the table; aggregates: no registry row) is refused, naming the bucket.
-- The worker already passes a cut-off moved back below such buckets: it never trips these.
CREATE OR REPLACE FUNCTION ops.retention_drop_chunks(p_table text, p_older_than timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    t record;
    first_unlanded timestamptz;
BEGIN
    SELECT * INTO t FROM ops.retention_targets rt WHERE rt.table_name = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a table tickstack manages', p_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_older_than IS NULL OR p_older_than > now() THEN
        RAISE EXCEPTION 'cut-off % for % is in the future: retention only removes the past',
            p_older_than, p_table USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF t.landed_via = 'ticks' THEN
        EXECUTE format(
            'SELECT min(x.b) FROM (SELECT market, symbol, %1$I AS b, count(*) AS n FROM %2$s '
            'WHERE %1$I < $1 GROUP BY 1, 2, 3) x LEFT JOIN landing.raw_blobs_5m r '
            'ON r.market = x.market AND r.asset = x.symbol AND r.bucket_5m = x.b '
            'WHERE r.bucket_5m IS NULL OR (r.metadata->>''row_count'')::bigint < x.n',
            t.time_column, p_table) INTO first_unlanded USING p_older_than;
    ELSE
        EXECUTE format(
            'SELECT min(x.%1$I) FROM %2$s x LEFT JOIN landing.raw_blobs_5m r '
            'ON r.market = x.market AND r.asset = x.symbol AND r.bucket_5m = x.%1$I '
            'WHERE x.%1$I < $1 AND r.bucket_5m IS NULL',
            t.time_column, p_table) INTO first_unlanded USING p_older_than;
    END IF;
    IF first_unlanded IS NOT NULL THEN
        RAISE EXCEPTION 'cut-off % for % would drop bucket % that landing does not hold: '
            'retention keeps it (the cut-off must not pass the oldest unlanded bucket)',
            p_older_than, p_table, first_unlanded USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT public.drop_chunks(p_table::regclass, older_than => p_older_than);
END
$$;
