-- One audited outcome per job and run (detail: the job's actions, workers/ops/retention_actions.py).
INSERT INTO ops.retention_runs (run_id, job_name, started_at, finished_at, dry_run, outcome,
                                action, chunks, rows, range_start, range_end, detail)
VALUES (%s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s, %s)
