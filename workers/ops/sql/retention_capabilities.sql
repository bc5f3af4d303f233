-- What the server can do: TimescaleDB present, and its licence (NULL without it).
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
       current_setting('timescaledb.license', true)
