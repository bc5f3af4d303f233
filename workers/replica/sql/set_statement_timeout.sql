SET statement_timeout = {}
