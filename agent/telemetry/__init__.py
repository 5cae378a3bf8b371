"""agent.telemetry: see agent/__init__.py."""
