-- Schemas along the data's way: landing -> market_data -> signals; ingestion state; ops.
CREATE SCHEMA landing;
CREATE SCHEMA market_data;
CREATE SCHEMA signals;
CREATE SCHEMA ingestion;
-- ops exists already (it holds the ledger, created by the admin); the migrator takes it over.
