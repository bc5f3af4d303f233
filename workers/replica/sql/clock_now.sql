-- The server's time now (not the transaction's start).
SELECT clock_timestamp()
