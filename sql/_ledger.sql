-- The migration ledger. Applied by the runner before anything else, idempotently, so the
-- runner can lock and read it on an empty database. Not a numbered migration on purpose.
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS ops.schema_migrations (
    filename      text PRIMARY KEY,
    sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    applied_at    timestamptz NOT NULL DEFAULT now(),
    applied_by    text NOT NULL DEFAULT current_user,
    duration_ms   integer NOT NULL CHECK (duration_ms >= 0),
    -- What the server offered when the file ran (extensions, licence): the schema it built
    -- depends on it (hypertable or plain table, compression or not).
    capabilities  jsonb NOT NULL
);
