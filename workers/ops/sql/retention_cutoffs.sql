SELECT ops.retention_horizon(%s), ops.retention_horizon(%s)
