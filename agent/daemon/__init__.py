"""agent.daemon: see agent/__init__.py."""
