"""agent.cli: see agent/__init__.py."""
