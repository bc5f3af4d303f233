"""From ticks to signals: features of a 5-minute window, its 256-d embedding, the ivfflat index
lifecycle and the "similar windows" query."""
