-- One job's drop cutoff now, when its drop_after is a valid interval the retention worker accepts.
SELECT CASE WHEN %(i)s::interval BETWEEN '1 day'::interval AND '100 years'::interval
            THEN now() - %(i)s::interval END
