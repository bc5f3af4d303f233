-- assigns a transaction id: its commit is in the WAL
SELECT pg_current_xact_id()
