-- The windows of one series whose labels lack some of the keys asked for.
SELECT bucket, label_snapshot FROM signals.btc_embeddings WHERE market = %s
AND symbol = %s AND NOT (label_snapshot ?& %s)
