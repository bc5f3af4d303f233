-- Since server_version_num 160000, a role made by an admin that has CREATEROLE but is not a superuser
-- (RDS's master user, the local replica's admin) is granted to that admin WITH ADMIN only, so
-- the admin could not act as it (ALTER ... OWNER TO it fails: "must be able to SET ROLE"). Ask
-- for SET and INHERIT as well, as every release before 16 gave, for this session only.
SELECT set_config('createrole_self_grant', 'set, inherit', false)
WHERE current_setting('server_version_num')::int >= 160000
