COPY {table} ({cols}) FROM STDIN (FORMAT binary)
