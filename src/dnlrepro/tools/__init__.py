"""Commands around the engine: evaluate, predict, show-config, and their checkpoint fetch."""
