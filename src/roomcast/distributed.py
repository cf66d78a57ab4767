"""Compatibility path: ``DistributedWebSocketManager`` lives in ``roomcast.fastapi.distributed``."""

from roomcast.fastapi.distributed import DistributedWebSocketManager

__all__ = ["DistributedWebSocketManager"]
