"""integration tests (see tests/README or the module docstrings)."""
