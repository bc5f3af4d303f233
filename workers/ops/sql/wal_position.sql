-- WAL segment size in bytes, and the newest WAL file the archiver reports as archived.
SELECT setting::bigint, (SELECT last_archived_wal FROM pg_stat_archiver)
FROM pg_settings WHERE name = 'wal_segment_size'
