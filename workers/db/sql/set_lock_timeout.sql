SET lock_timeout = {}
