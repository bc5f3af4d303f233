-- The oldest bucket below the cut-off with no landing registry row, and how many there are.
-- {col}, {tbl}: the job's time column and table (psycopg.sql identifiers).
SELECT min(t.{col}), count(*)
FROM {tbl} t
LEFT JOIN landing.raw_blobs_5m r
    ON r.market = t.market AND r.asset = t.symbol AND r.bucket_5m = t.{col}
WHERE t.{col} < %s AND r.bucket_5m IS NULL
