-- ingestion.stream_offsets: how far each source has been ingested; advanced in the same
-- transaction as the ticks it covers, and only forward.
CREATE TABLE ingestion.stream_offsets (
    source          text        NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
    symbol          text        NOT NULL CHECK (symbol ~ '^[A-Z0-9_]{2,32}$'),
    last_trade_id   bigint      NOT NULL CHECK (last_trade_id >= 0),
    last_event_time timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, symbol)
);

CREATE FUNCTION ingestion.offsets_only_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.last_trade_id < OLD.last_trade_id THEN
        RAISE EXCEPTION 'offset for %/% would move back from % to %',
            OLD.source, OLD.symbol, OLD.last_trade_id, NEW.last_trade_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER stream_offsets_forward BEFORE UPDATE ON ingestion.stream_offsets
    FOR EACH ROW EXECUTE FUNCTION ingestion.offsets_only_forward();
