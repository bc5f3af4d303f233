-- A job's interval: within [lowest, highest], and its value.
SELECT %(text)s::interval BETWEEN %(lowest)s::interval AND %(highest)s::interval,
       %(text)s::interval
