"""The S3 landing bucket, the source of truth: one Parquet object per (market, symbol, 5-minute
bucket), stream parts not yet compacted, quarantined rows. Landing owns its keys, reads
(verified against a checksum) and every read-merge-write of a bucket object."""
