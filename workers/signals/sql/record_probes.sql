SELECT signals.record_embedding_index_probes(%s, %s::integer, %s::real,
%s::integer)
