INSERT INTO market_data.btc_ticks ({cols}) SELECT {cols} FROM ticks_stage
ON CONFLICT (bucket_5m, market, symbol, trade_id) DO NOTHING
