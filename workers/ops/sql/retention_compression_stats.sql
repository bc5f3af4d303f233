-- [before, after] compression over the table's compressed chunks: what it saved.
SELECT sum(before_compression_total_bytes)::float8,
       sum(after_compression_total_bytes)::float8
FROM hypertable_compression_stats(%s)
