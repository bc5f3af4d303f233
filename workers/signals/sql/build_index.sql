SELECT signals.build_embedding_index(%s, %s)
