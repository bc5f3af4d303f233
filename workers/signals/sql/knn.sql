-- The k windows of one series nearest to %(q)s, up to %(upto)s, through the ivfflat index over
-- feature_vector::halfvec(256) (the ORDER BY must be that expression for the index to serve
-- it). The scan returns %(candidates)s rows in halfvec order; the exact float distance re-ranks
-- them, so float16 rounding cannot swap near ties. With ivfflat.iterative_scan the scan probes
-- further lists while fewer rows than the LIMIT pass the filter (an early --at). The last
-- column is the settings the scan ran with (vector_index.search checks them).
WITH candidates AS MATERIALIZED (
    SELECT bucket, feature_vector, label_snapshot
    FROM signals.btc_embeddings
    WHERE market = %(market)s AND symbol = %(symbol)s AND bucket <= %(upto)s
    ORDER BY feature_vector::halfvec(256) <=> %(q)s::halfvec(256)
    LIMIT %(candidates)s
)
SELECT bucket, feature_vector <=> %(q)s AS distance, label_snapshot,
       current_setting('ivfflat.probes') || '/' || current_setting('ivfflat.iterative_scan')
FROM candidates
ORDER BY distance, bucket
LIMIT %(k)s
