-- The chunks of a managed table entirely older than a cut-off (the Chunk row of
-- workers/ops/retention_actions.py: the function's columns, in order).
SELECT chunk, range_start, range_end, rows, is_compressed
FROM ops.retention_chunks(%s, %s)
