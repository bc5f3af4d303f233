-- The ivfflat indexes on the embeddings table now (more than one: a swap has not dropped the
-- replaced index yet).
SELECT c.relname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_am a ON a.oid = c.relam AND a.amname = 'ivfflat'
WHERE i.indrelid = 'signals.btc_embeddings'::regclass
