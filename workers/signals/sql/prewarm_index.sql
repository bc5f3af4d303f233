-- Load the index in use into shared_buffers when it fits there (pg_prewarm, sql/019): its size,
-- shared_buffers, and the blocks loaded (NULL when it does not fit: prewarming it would only
-- evict itself, and the worker says so instead).
SELECT pg_relation_size(c.oid) AS bytes,
       pg_size_bytes(current_setting('shared_buffers')) AS shared_buffers,
       CASE WHEN pg_relation_size(c.oid) <= pg_size_bytes(current_setting('shared_buffers')) / 2
            THEN public.pg_prewarm(c.oid) END AS blocks
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'signals'
WHERE c.relname = %(index)s AND c.relkind = 'i'
