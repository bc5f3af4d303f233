-- The series' unconditional mean of each label (one label_mean.sql per label key).
SELECT {means} FROM signals.btc_embeddings WHERE market = %s
AND symbol = %s
