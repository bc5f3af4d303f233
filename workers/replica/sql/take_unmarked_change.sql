-- Ticks changed by a statement that did not mark its buckets (sql/017): take the flag; every
-- bucket's digest is then recomputed.
UPDATE market_data.tick_digest_state SET unmarked_change = false
WHERE unmarked_change
RETURNING changed_at
