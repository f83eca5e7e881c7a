"""The configuration: the schema, the strict TOML reader, the rendering for config check."""
