-- The k windows of one series nearest to %(q)s, up to %(upto)s, by the exact float distance
-- over every row (no index matches this ORDER BY): the answer below the index threshold, and
-- the benchmark's baseline.
SELECT bucket, feature_vector <=> %(q)s AS distance, label_snapshot
FROM signals.btc_embeddings
WHERE market = %(market)s AND symbol = %(symbol)s AND bucket <= %(upto)s
ORDER BY distance, bucket
LIMIT %(k)s
