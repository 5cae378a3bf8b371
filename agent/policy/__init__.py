"""agent.policy: see agent/__init__.py."""
