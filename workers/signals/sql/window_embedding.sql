SELECT feature_vector, label_snapshot FROM signals.btc_embeddings
WHERE market = %s AND symbol = %s AND bucket = %s
