-- Query-time probes checked for each index instead of only taken from a formula: right after
-- a build the embeddings worker samples windows of the table, answers them exactly and through
-- the new index, and records the probes (the formula's, or more when those fall short) whose
-- recall@10 reaches its target (workers/signals/vector_index.py calibrate). A formula fitted
-- to generated windows says nothing about recall on real ones; this is measured on the data
-- the index serves.
ALTER TABLE signals.vector_index_builds
    ADD COLUMN probes integer CHECK (probes >= 1),
    ADD COLUMN probes_recall real CHECK (probes_recall BETWEEN 0 AND 1),
    ADD COLUMN probes_queries integer CHECK (probes_queries >= 0);

-- The embeddings worker may not write the table: it records through this function.
CREATE FUNCTION signals.record_embedding_index_probes(
    p_index text, p_probes integer, p_recall real, p_queries integer)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    UPDATE signals.vector_index_builds
    SET probes = p_probes, probes_recall = p_recall, probes_queries = p_queries
    WHERE index_name = p_index;
    RETURN FOUND;
END
$$;

REVOKE ALL ON FUNCTION signals.record_embedding_index_probes(text, integer, real, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION signals.record_embedding_index_probes(text, integer, real, integer)
    TO tickstack_embed;
