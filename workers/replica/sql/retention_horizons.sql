-- Per table retention manages on this server: the cutoff of the latest real (not dry) run's
-- drop (drop_chunks on TimescaleDB, batched delete on plain PostgreSQL) — where this server's
-- retention stands now. Rows older than it may be gone here by design. (Enabled jobs'
-- drop_after: retention_policies.sql.)
SELECT t.table_name,
       (SELECT (a->>'cutoff')::timestamptz
        FROM ops.retention_runs r CROSS JOIN LATERAL jsonb_array_elements(
            CASE jsonb_typeof(r.detail->'actions') WHEN 'array' THEN r.detail->'actions'
                 ELSE '[]'::jsonb END) a
        WHERE NOT r.dry_run AND r.outcome IN ('applied', 'nothing-to-do')
          AND r.detail->>'table' = t.table_name
          AND a->>'action' IN ('drop_chunks', 'delete') AND a ? 'cutoff'
        ORDER BY r.finished_at DESC LIMIT 1)
FROM ops.retention_targets t
