COPY emb_stage FROM STDIN (FORMAT binary)
