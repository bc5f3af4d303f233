-- Rows below the cut-off and their time span. {c}, {t}: the time column and table.
SELECT count(*), min({c}), max({c}) FROM {t} WHERE {c} < %s
