-- Issue 27: `replicate` compares and repairs everything the replica holds — ticks, registry rows
-- and 5-minute aggregates — and does not count what retention dropped on one side as a
-- difference.
--   * Reading where retention cuts (ops.retention_jobs, ops.retention_runs): the replicate
--     worker reads them on both servers — on the primary as the ingest login, on the replica as
--     tickstack_replicate (which has ingest's rights).
--   * On the replica only (plain PostgreSQL, no TimescaleDB): tickstack_replicate may remove a
--     registry row or aggregate row the primary has none of, when it rebuilds that bucket.
GRANT SELECT ON ops.retention_jobs, ops.retention_runs, ops.retention_targets TO tickstack_ingest;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        GRANT DELETE ON landing.raw_blobs_5m, market_data.btc_ohlcv_5m TO tickstack_replicate;
    END IF;
END
$$;
