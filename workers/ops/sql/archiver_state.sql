-- The WAL archiver's counters; `failing` when the newest attempt failed.
SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,
       last_failed_time, stats_reset,
       coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) AS failing
FROM pg_stat_archiver
