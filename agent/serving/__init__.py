"""agent.serving: see agent/__init__.py."""
