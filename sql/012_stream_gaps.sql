-- ingestion.stream_gaps: trade-id holes the live stream saw (a jump in the trade-id sequence,
-- usually after a reconnect). A plain exchange stream cannot re-send what it missed, so a gap
-- stays open until the ids are actually present in market_data.btc_ticks (e.g. a later file
-- ingest of that day); only then does `filled_at` get set.
CREATE TABLE ingestion.stream_gaps (
    source            text        NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
    symbol            text        NOT NULL CHECK (symbol ~ '^[A-Z0-9_]{2,32}$'),
    first_missing_id  bigint      NOT NULL CHECK (first_missing_id >= 0),
    last_missing_id   bigint      NOT NULL,
    -- Trade times on either side of the hole: the missing trades happened in between.
    after_time        timestamptz NOT NULL,
    before_time       timestamptz NOT NULL,
    detected_at       timestamptz NOT NULL DEFAULT now(),
    present_count     bigint      NOT NULL DEFAULT 0 CHECK (present_count >= 0),
    checked_at        timestamptz,
    filled_at         timestamptz,
    PRIMARY KEY (source, symbol, first_missing_id),
    CHECK (last_missing_id >= first_missing_id),
    CHECK (before_time >= after_time),
    CHECK (present_count <= last_missing_id - first_missing_id + 1),
    CHECK (filled_at IS NULL OR present_count = last_missing_id - first_missing_id + 1)
);
CREATE INDEX stream_gaps_open_idx ON ingestion.stream_gaps (symbol, first_missing_id)
    WHERE filled_at IS NULL;
COMMENT ON TABLE ingestion.stream_gaps IS
    'Trade-id gaps seen by the live stream; filled_at is set only once every id is present.';

GRANT SELECT, INSERT, UPDATE ON ingestion.stream_gaps TO tickstack_ingest;
GRANT SELECT ON ingestion.stream_gaps TO tickstack_reader;
