-- A bucket's registry row on the replica, exactly the primary's (rewritten when any compared
-- column differs; creation time kept).
INSERT INTO landing.raw_blobs_5m AS r (market, asset, bucket_5m, s3_uri, object_size_bytes,
    ingested_tick_span, metadata)
VALUES (%s, %s, %s, %s, %s, %s::tstzrange, %s::jsonb)
ON CONFLICT (market, asset, bucket_5m) DO UPDATE SET s3_uri = EXCLUDED.s3_uri,
    object_size_bytes = EXCLUDED.object_size_bytes,
    ingested_tick_span = EXCLUDED.ingested_tick_span,
    metadata = EXCLUDED.metadata, updated_at = now()
WHERE (r.s3_uri, r.object_size_bytes, r.ingested_tick_span, r.metadata)
    IS DISTINCT FROM (EXCLUDED.s3_uri, EXCLUDED.object_size_bytes, EXCLUDED.ingested_tick_span,
                      EXCLUDED.metadata)
