-- The enabled jobs, or the one named (NULL: all), in name order.
SELECT job_name, hypertable, policy
FROM ops.retention_jobs
WHERE enabled AND (%(job)s::text IS NULL OR job_name = %(job)s)
ORDER BY job_name
