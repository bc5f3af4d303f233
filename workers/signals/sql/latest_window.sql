-- The newest embedded window of one series (the third parameter true: the newest whose next
-- hour is known).
SELECT max(bucket) FROM signals.btc_embeddings WHERE market = %s
AND symbol = %s
AND (NOT %s OR label_snapshot ? 'fwd_ret_60m')
