-- tickstack: as-admin
-- Group roles, NOLOGIN: login users are granted membership (works on managed Postgres too).
-- Roles are cluster-wide, so creation is conditional.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['tickstack_migrator', 'tickstack_ingest', 'tickstack_embed',
                             'tickstack_retention', 'tickstack_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    -- The migrator owns every object; the admin running migrations acts through it.
    EXECUTE format('GRANT CREATE, CONNECT, TEMPORARY ON DATABASE %I TO tickstack_migrator',
                   current_database());
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO tickstack_ingest, '
                   'tickstack_embed, tickstack_retention', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO tickstack_reader', current_database());
    IF NOT pg_has_role(current_user, 'tickstack_migrator', 'MEMBER') THEN
        EXECUTE format('GRANT tickstack_migrator TO %I', current_user);
    END IF;
END
$$;

-- The ledger's schema was made by the admin; the migrator owns the schema (not the ledger).
ALTER SCHEMA ops OWNER TO tickstack_migrator;
