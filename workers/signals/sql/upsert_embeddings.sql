-- The staged vectors of one batch: new windows inserted, recomputed ones replaced.
INSERT INTO signals.btc_embeddings AS e (market, symbol, bucket, feature_vector,
    feature_version, source_sha256)
SELECT market, symbol, bucket, feature_vector, feature_version, source_sha256 FROM emb_stage
ON CONFLICT (market, symbol, bucket) DO UPDATE SET feature_vector = EXCLUDED.feature_vector,
    feature_version = EXCLUDED.feature_version, source_sha256 = EXCLUDED.source_sha256,
    updated_at = now()
