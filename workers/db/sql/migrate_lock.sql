-- One migrate at a time per server (session lock on its own connection).
SELECT pg_advisory_lock(%s)
