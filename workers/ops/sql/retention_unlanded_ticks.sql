-- The oldest bucket below the cut-off whose ticks the landing registry does not account for
-- (no registry row, or fewer rows registered than the table holds), and how many there are.
-- {col}, {tbl}: the job's time column and table (psycopg.sql identifiers).
SELECT min(t.b), count(*)
FROM (SELECT market, symbol, {col} AS b, count(*) AS n
      FROM {tbl}
      WHERE {col} < %s GROUP BY 1, 2, 3) t
LEFT JOIN landing.raw_blobs_5m r
    ON r.market = t.market AND r.asset = t.symbol AND r.bucket_5m = t.b
WHERE r.bucket_5m IS NULL OR (r.metadata->>'row_count')::bigint < t.n
