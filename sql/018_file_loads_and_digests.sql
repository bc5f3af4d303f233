-- Issue 19: files already loaded, and per-bucket digests of the ticks.
--
-- ingestion.file_loads: the dump files whose load completed, so a rerun over files already
-- loaded costs almost nothing (issue 19). A file is skipped only when its own SHA-256 is the
-- one recorded and the registry rows over the buckets it covered are exactly those recorded
-- when its load completed (`registry_fingerprint`, workers/db/file_loads.py); anything else —
-- another file under the same name, a bucket rewritten or removed since — loads the file again
-- through the full path. Kept on the primary only, beside the registry it fingerprints, so a
-- point-in-time restore rolls both back together.
CREATE TABLE ingestion.file_loads (
    market               text        NOT NULL CHECK (market IN ('spot', 'um', 'cm')),
    symbol               text        NOT NULL CHECK (symbol ~ '^[A-Z0-9_]{2,32}$'),
    file_sha256          text        NOT NULL CHECK (file_sha256 ~ '^[0-9a-f]{64}$'),
    file_name            text        NOT NULL CHECK (length(file_name) BETWEEN 1 AND 255),
    first_bucket         timestamptz NOT NULL,
    last_bucket          timestamptz NOT NULL,
    registry_fingerprint text        NOT NULL CHECK (length(registry_fingerprint) <= 100),
    rows_read            bigint      NOT NULL CHECK (rows_read >= 0),
    accepted             bigint      NOT NULL CHECK (accepted >= 0),
    quarantined          bigint      NOT NULL CHECK (quarantined >= 0),
    quarantine_uri       text,
    loaded_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market, symbol, file_sha256),
    CHECK (first_bucket <= last_bucket)
);
COMMENT ON TABLE ingestion.file_loads IS
    'Completed loads of dump files (SHA-256, buckets covered, registry fingerprint at the end).';

GRANT SELECT, INSERT, UPDATE ON ingestion.file_loads TO tickstack_ingest;
GRANT SELECT ON ingestion.file_loads TO tickstack_reader;

-- market_data.tick_digests: a digest of each 5-minute bucket's ticks (row count and the XOR of
-- a 64-bit hash of every tick), on the primary and the replica alike, so `workers replicate`
-- compares a month per day (a digest of the day's bucket digests), drills into the days that
-- differ, and recomputes only the buckets written since the last comparison: O(changed), not
-- O(all). Every tickstack writer of ticks marks the buckets it touches stale (digest NULL,
-- version + 1) in the transaction that writes them (workers/db/load.py); `replicate` recomputes
-- stale digests from the ticks themselves. A statement that changes ticks without marking
-- (anything outside tickstack's writers: a manual UPDATE, DELETE, TRUNCATE) sets
-- tick_digest_state.unmarked_change, and the next comparison recomputes every bucket.
CREATE TABLE market_data.tick_digests (
    market      text        NOT NULL CHECK (market IN ('spot', 'um', 'cm')),
    symbol      text        NOT NULL CHECK (symbol ~ '^[A-Z0-9_]{2,32}$'),
    bucket_5m   timestamptz NOT NULL,
    tick_count  bigint      CHECK (tick_count > 0),
    digest      bigint,
    version     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (market, symbol, bucket_5m),
    CHECK ((tick_count IS NULL) = (digest IS NULL))
);
CREATE INDEX tick_digests_stale_idx ON market_data.tick_digests (bucket_5m)
    WHERE digest IS NULL;
COMMENT ON TABLE market_data.tick_digests IS
    'Per-bucket tick count and digest (NULL: stale, recomputed by replicate from the ticks).';

CREATE TABLE market_data.tick_digest_state (
    only_row        boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    -- true at first: ticks that predate this table have no digests yet.
    unmarked_change boolean     NOT NULL DEFAULT true,
    changed_at      timestamptz
);
INSERT INTO market_data.tick_digest_state DEFAULT VALUES;

CREATE FUNCTION market_data.note_unmarked_tick_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    IF current_setting('tickstack.digests_marked', true) IS DISTINCT FROM 'on' THEN
        UPDATE market_data.tick_digest_state SET unmarked_change = true, changed_at = now()
        WHERE NOT unmarked_change;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION market_data.note_unmarked_tick_change() FROM PUBLIC;
-- Once per statement (a COPY of a flush is one): nothing per row.
CREATE TRIGGER btc_ticks_unmarked_change
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON market_data.btc_ticks
    FOR EACH STATEMENT EXECUTE FUNCTION market_data.note_unmarked_tick_change();

-- Writers of ticks mark; replicate (ingest's rights on both servers) recomputes; retention
-- marks what it removes.
GRANT SELECT, INSERT, UPDATE, DELETE ON market_data.tick_digests TO tickstack_ingest;
GRANT SELECT, UPDATE ON market_data.tick_digest_state TO tickstack_ingest;
GRANT SELECT, UPDATE ON market_data.tick_digests TO tickstack_retention;
