"""Compatibility path: ``roomcast serve``'s server lives in ``roomcast.serve``."""

from roomcast.serve.config import ServerConfig
from roomcast.serve.server import Server

__all__ = ["Server", "ServerConfig"]
