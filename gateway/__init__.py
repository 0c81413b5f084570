"""The gateway core: app factory, settings, CLI, the ingest/query/retrieve services."""
__version__ = "0.1.0"
