-- ops.retention_jobs (seed 004) and the audit of every retention run.
CREATE TABLE ops.retention_jobs (
    job_name    text        PRIMARY KEY CHECK (job_name ~ '^[a-z0-9_.-]{1,64}$'),
    hypertable  text        NOT NULL,
    policy      jsonb       NOT NULL,
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- A policy is an object with only these keys, at least one, each a string. Whether each
    -- string is a sane interval is checked by the worker (it must not fail the whole table).
    CONSTRAINT retention_policy_shape CHECK (
        jsonb_typeof(policy) = 'object'
        AND policy - ARRAY['compress_after', 'drop_after'] = '{}'::jsonb
        AND (policy ? 'compress_after' OR policy ? 'drop_after')
        AND coalesce(jsonb_typeof(policy->'compress_after'), 'string') = 'string'
        AND coalesce(jsonb_typeof(policy->'drop_after'), 'string') = 'string')
);

CREATE TABLE ops.retention_runs (
    run_id      uuid        NOT NULL,
    job_name    text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    dry_run     boolean     NOT NULL,
    outcome     text        NOT NULL
        CHECK (outcome IN ('applied', 'dry-run', 'nothing-to-do', 'rejected', 'failed')),
    action      text,
    chunks      integer,
    rows        bigint,
    range_start timestamptz,
    range_end   timestamptz,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (run_id, job_name)
);
CREATE INDEX retention_runs_started_idx ON ops.retention_runs (started_at DESC);
