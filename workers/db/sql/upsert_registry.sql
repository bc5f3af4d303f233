-- One landing object per (asset, 5-minute bucket): URI, size, span and checksum. Rewritten only
-- when the object's SHA-256 changed, so re-registering the same object changes nothing.
INSERT INTO landing.raw_blobs_5m AS r (asset, bucket_5m, s3_uri, object_size_bytes,
    ingested_tick_span, metadata)
VALUES (%s, %s, %s, %s, tstzrange(%s, %s, '[]'), %s)
ON CONFLICT (asset, bucket_5m) DO UPDATE SET s3_uri = EXCLUDED.s3_uri,
    object_size_bytes = EXCLUDED.object_size_bytes,
    ingested_tick_span = EXCLUDED.ingested_tick_span,
    metadata = EXCLUDED.metadata, updated_at = now()
WHERE r.metadata->>'sha256' IS DISTINCT FROM EXCLUDED.metadata->>'sha256'
