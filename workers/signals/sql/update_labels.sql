UPDATE signals.btc_embeddings SET label_snapshot = %s,
updated_at = now() WHERE market = %s AND symbol = %s
AND bucket = %s
