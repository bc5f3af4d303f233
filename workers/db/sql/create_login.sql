-- The password travels as a SCRAM-SHA-256 verifier, never in clear.
CREATE ROLE {user} LOGIN PASSWORD {verifier}
