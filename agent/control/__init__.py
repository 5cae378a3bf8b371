"""agent.control: see agent/__init__.py."""
