-- The filter is applied after the index scan: iterative scans keep probing lists until enough
-- rows pass it, instead of returning fewer than asked.
SET ivfflat.probes = {probes}; SET ivfflat.iterative_scan = {scan}
