SELECT ops.retention_compress_chunk(%s, %s)
