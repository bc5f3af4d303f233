-- The series that have bars, of one market and symbol (NULL: all).
SELECT DISTINCT market, symbol FROM market_data.btc_ohlcv_5m WHERE
(%(m)s::text IS NULL OR market = %(m)s) AND (%(s)s::text IS NULL OR symbol = %(s)s)
ORDER BY 1, 2
