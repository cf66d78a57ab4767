"""Who is in a room, cluster-wide.

``feed`` serves ``roomcast serve``'s ``$presence:R`` rooms from the hub (one process) or from
``roster`` (a per-room Redis set per instance); ``connection_registry`` is the per-connection
Redis registry with TTLs behind ``AuthConnectionManager``.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # ``roomcast.presence`` was the module of the connection registry; its names still import
    # from here (lazily: they need redis).
    if name in ("PresenceRegistry", "StaleConnection"):
        from roomcast.presence import connection_registry

        return getattr(connection_registry, name)
    raise AttributeError(name)
