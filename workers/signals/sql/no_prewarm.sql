-- True when this server has no pg_prewarm.
SELECT to_regproc('public.pg_prewarm') IS NULL
