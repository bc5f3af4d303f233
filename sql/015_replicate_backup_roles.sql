-- tickstack: as-admin
-- Two more least-privilege groups (logins: configs.WORKER_LOGINS; `migrate` creates them):
--   tickstack_replicate  replicate on the replica: ingest's rights, plus DELETE of ticks, to
--                        rebuild a bucket that differs from landing (issue 21, item 7)
--   tickstack_backup     backup --check: the archiver's state (pg_ls_archive_statusdir needs
--                        pg_monitor), nothing of tickstack's data
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['tickstack_replicate', 'tickstack_backup'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO tickstack_replicate',
                   current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO tickstack_backup', current_database());
END
$$;

GRANT tickstack_ingest TO tickstack_replicate;
GRANT DELETE ON market_data.btc_ticks TO tickstack_replicate;
GRANT pg_monitor TO tickstack_backup;
