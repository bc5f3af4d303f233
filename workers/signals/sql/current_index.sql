-- The index in use: the newest recorded build that still exists.
SELECT b.index_name, b.rows, b.lists, b.kind, b.probes
FROM signals.vector_index_builds b
JOIN pg_class c ON c.relname = b.index_name
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'signals'
ORDER BY b.built_at DESC, b.index_name DESC LIMIT 1
