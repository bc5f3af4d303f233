-- Issue 27: a trade id is stored in one bucket only. For every flush the file ingest looks up
-- the buckets whose trade-id range overlaps the flush's ids (workers/db/sql/
-- buckets_by_trade_ids.sql): from the aggregate (indexed since 014) and from the registry,
-- which records the range of every bucket, also of one without an aggregate row (flagged
-- trades only). Indexed here so the lookup does not read a symbol's whole registry per flush
-- (a year of one symbol, 105k rows: 30 ms a flush without it). Partial: only rows whose range
-- is a JSON number, so no registry row can make the index (or this migration) fail.
CREATE INDEX raw_blobs_5m_trade_ids_idx ON landing.raw_blobs_5m
    (market, asset, ((metadata->'last_trade_id')::numeric))
    WHERE jsonb_typeof(metadata->'last_trade_id') = 'number'
      AND jsonb_typeof(metadata->'first_trade_id') = 'number';
