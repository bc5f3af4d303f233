SELECT count(*) FROM signals.btc_embeddings
