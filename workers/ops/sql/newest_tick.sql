SELECT max(event_time) FROM market_data.btc_ticks
