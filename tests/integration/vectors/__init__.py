"""The ivfflat index on signals.btc_embeddings, its swap while readers query, and `similar`."""
