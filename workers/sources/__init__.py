"""Where trades come from: Binance dump files, the live websocket stream, and the validation
that turns their text into typed ticks (bad rows come back with their reason)."""
