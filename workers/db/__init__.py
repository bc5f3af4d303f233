"""The primary database: migrations, loading landed buckets (ticks, registry, aggregate,
offsets) and the ingest paths that land first, then load (files, landing replay, the stream)."""
