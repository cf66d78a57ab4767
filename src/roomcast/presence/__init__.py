"""Who is in a room, cluster-wide.

``feed`` serves ``roomcast serve``'s ``$presence:R`` rooms from the hub (one process) or from
``roster`` (a per-room Redis set per instance); ``connection_registry`` is the per-connection
Redis registry with TTLs behind ``AuthConnectionManager``.
"""
