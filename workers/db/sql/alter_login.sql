-- The password travels as a SCRAM-SHA-256 verifier, never in clear.
ALTER ROLE {user} LOGIN PASSWORD {verifier}
