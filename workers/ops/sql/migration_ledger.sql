-- `workers restore`: the restored database's migration ledger, compared with sql/.
SELECT filename, sha256 FROM ops.schema_migrations ORDER BY filename
