-- Segments waiting for the archiver (pg_wal/archive_status/*.ready) and how long the oldest
-- waits.
SELECT count(*), extract(epoch FROM now() - min(modification))
FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'
