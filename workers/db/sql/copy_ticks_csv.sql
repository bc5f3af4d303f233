COPY {table} ({cols}) FROM STDIN (FORMAT csv)
