SELECT pg_walfile_name(pg_switch_wal())
