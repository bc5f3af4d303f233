-- Enabled jobs that drop rows, and where their cutoff is now: the same validity rule as the
-- retention worker (an interval within [1 day, 100 years]: workers/ops/retention.py
-- MIN_INTERVAL, MAX_INTERVAL) is applied by the caller, one job at a time.
SELECT j.job_name, j.hypertable, j.policy->>'drop_after'
FROM ops.retention_jobs j
WHERE j.enabled AND j.policy ? 'drop_after' AND jsonb_typeof(j.policy->'drop_after') = 'string'
ORDER BY 1
