-- Every digest is stale: recomputed next (with add_missing_digests.sql, in one transaction).
UPDATE market_data.tick_digests SET tick_count = NULL, digest = NULL, version = version + 1
WHERE digest IS NOT NULL
