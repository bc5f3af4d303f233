"""`workers fetch` against a local mirror of Binance's public archive (archive_server.py)."""
