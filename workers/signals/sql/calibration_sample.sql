-- Windows to calibrate an index's probes with: a random sample of the table, each asked for
-- its neighbours before the hour that precedes it (as `workers similar` asks by default), so
-- the window itself is never the answer.
SELECT market, symbol, bucket - interval '60 minutes 1 microsecond' AS upto, feature_vector
FROM signals.btc_embeddings
ORDER BY random()
LIMIT %(n)s
