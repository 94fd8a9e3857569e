"""Hardware (TOML) and model (HuggingFace config.json) presets shipped with sohuprof."""
