-- Closed windows of one symbol without an embedding, or whose landing object or feature
-- version changed since theirs was computed.
SELECT o.bucket_5m, r.metadata->>'sha256'
FROM market_data.btc_ohlcv_5m o
JOIN landing.raw_blobs_5m r ON r.asset = o.symbol AND r.bucket_5m = o.bucket_5m
LEFT JOIN signals.btc_embeddings e ON e.symbol = o.symbol AND e.bucket = o.bucket_5m
WHERE o.symbol = %(symbol)s
  AND o.bucket_5m + INTERVAL '5 minutes' <= %(now)s
  AND (e.bucket IS NULL OR e.source_sha256 IS DISTINCT FROM r.metadata->>'sha256'
       OR e.feature_version <> %(version)s)
ORDER BY o.bucket_5m
