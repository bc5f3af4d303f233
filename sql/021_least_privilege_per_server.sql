-- tickstack: as-admin
-- Issue 27, item 8: least privilege PER SERVER. 009/015 granted the same rights on both
-- servers, so on the primary `retention_worker` and `replicate_worker` could DELETE ticks
-- directly, bypassing the retention functions (sql/011) and their "landing holds it" guard.
--
-- Which server this is, told as every capability-aware migration tells it: TimescaleDB is
-- the primary's (001 creates it only where the server preloads it; never on the replica or
-- RDS), and there `market_data.btc_ticks` is a hypertable (005), whose old data retention
-- removes only through ops.retention_drop_chunks (SECURITY DEFINER, registered tables, whole
-- chunks older than a cut-off retention moved back to what landing holds).
--
--   primary   retention: no DELETE on ticks (chunks go through 011's functions);
--             replicate: nothing at all — `workers replicate` reads the primary as the ingest
--             login and writes only the replica (no membership of tickstack_ingest here).
--   replica   retention: DELETE in bounded batches (plain table), no EXECUTE on the
--             TimescaleDB-only retention functions; replicate: ingest's rights + DELETE of
--             ticks to rebuild a bucket that differs from landing (015).
--   both      no tickstack function is executable by PUBLIC (only by the roles granted it);
--             ops.retention_horizon, on the primary for the ingest login (`workers repair`).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        REVOKE DELETE ON market_data.btc_ticks FROM tickstack_retention, tickstack_replicate;
        -- Roles are cluster-wide: this cluster is a primary, and replicate needs nothing here.
        IF pg_has_role('tickstack_replicate', 'tickstack_ingest', 'MEMBER') THEN
            REVOKE tickstack_ingest FROM tickstack_replicate;
        END IF;
    ELSE
        REVOKE EXECUTE ON FUNCTION ops.retention_drop_chunks(text, timestamptz),
            ops.retention_compress_chunk(text, text),
            ops.retention_chunks(text, timestamptz) FROM tickstack_retention;
    END IF;
END
$$;

-- A trigger function runs whatever the caller's rights; nobody calls it directly.
REVOKE ALL ON FUNCTION ingestion.offsets_only_forward() FROM PUBLIC;

-- `workers repair` (the ingest login) must not re-load what retention removed on purpose:
-- the newest cut-off below which retention removed rows of a table on this server (NULL:
-- never). Drops remove whole 5-minute buckets (chunks on TimescaleDB, rows below the cut-off
-- elsewhere), so a bucket below it with no rows is retention's doing, not a loss.
CREATE FUNCTION ops.retention_horizon(p_table text) RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT max((a->>'cutoff')::timestamptz)
    FROM ops.retention_runs r, jsonb_array_elements(r.detail->'actions') a
    WHERE NOT r.dry_run AND r.outcome = 'applied' AND r.detail->>'table' = p_table
      AND a->>'action' IN ('drop_chunks', 'delete')
      AND coalesce((a->>'rows')::bigint, 0) > 0
$$;
ALTER FUNCTION ops.retention_horizon(text) OWNER TO tickstack_migrator;
REVOKE ALL ON FUNCTION ops.retention_horizon(text) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        GRANT EXECUTE ON FUNCTION ops.retention_horizon(text) TO tickstack_ingest;
    END IF;
END
$$;
