"""Ground floor: settings, logging, errors, the market registry (markets, instruments, bucket
ids), the tick schema and time units, SQL file loading, metrics and crash points. Everything
above may use it; it uses nothing of the workers."""
