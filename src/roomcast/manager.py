"""Compatibility path: ``ConnectionManager`` lives in ``roomcast.fastapi.manager``."""

from roomcast.fastapi.manager import ConnectionManager, ManagerStats, OverflowPolicy

__all__ = ["ConnectionManager", "ManagerStats", "OverflowPolicy"]
