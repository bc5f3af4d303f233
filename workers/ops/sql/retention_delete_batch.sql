-- One batch of rows below the cut-off (its own short transaction: no long locks, bounded WAL
-- bursts). {c}, {t}: the time column and table.
DELETE FROM {t}
WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {c} < %s LIMIT %s))
