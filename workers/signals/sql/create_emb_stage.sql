CREATE TEMP TABLE IF NOT EXISTS emb_stage (market text, symbol text,
bucket timestamptz, feature_vector vector(256), feature_version smallint,
source_sha256 text) ON COMMIT DELETE ROWS
