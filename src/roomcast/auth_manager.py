"""Compatibility path: ``AuthConnectionManager`` lives in ``roomcast.fastapi.auth_manager``."""

from roomcast.fastapi.auth_manager import AuthConnectionManager, ConnectionConfig

__all__ = ["AuthConnectionManager", "ConnectionConfig"]
