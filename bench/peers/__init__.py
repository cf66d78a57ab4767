"""Bench-only peer servers that ``serve.py`` compares with ``roomcast serve``."""
