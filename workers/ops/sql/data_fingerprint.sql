-- What a backup is of: stored as an annotation with the backup, compared on the next run.
SELECT concat_ws('/',
  (SELECT count(*) || ':' || coalesce(md5(string_agg(asset || bucket_5m::text ||
          coalesce(metadata->>'sha256', ''), ',' ORDER BY asset, bucket_5m)), '')
     FROM landing.raw_blobs_5m),
  (SELECT count(*) FROM market_data.btc_ticks),
  (SELECT count(*) || ':' || coalesce(max(updated_at)::text, '') FROM signals.btc_embeddings),
  (SELECT count(*) FROM ops.schema_migrations))
