"""agent.zoo: see agent/__init__.py."""
