"""The typed run configuration (schema and loading) and the YAML files that set it."""
