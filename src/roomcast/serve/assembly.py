"""The hub a ``roomcast serve`` process serves, made from its options: the broker (Redis, with
``--redis-url``), the history each room keeps (per namespace with ``--config``'s rules), the
limits."""

from __future__ import annotations

from roomcast.history.positions import HistoryLimits, history_for_all
from roomcast.hub import Hub, OverflowPolicy
from roomcast.serve.config import ServerConfig

__all__ = ["new_hub"]


def new_hub(config: ServerConfig) -> Hub:
    """The hub ``config`` describes (not started)."""
    broker = None
    if config.redis_url is not None:
        from roomcast.brokers.redis import RedisBroker

        broker = RedisBroker(config.redis_url, prefix=config.channel_prefix)
    history = None
    limits = None
    if config.history_size > 0:
        limits = HistoryLimits(config.history_size, config.history_ttl)
    if config.rules is not None:  # (namespaces may keep more, less or no history)
        history = config.rules.history_rule(limits)
    elif limits is not None:
        history = history_for_all(limits)
    return Hub(
        broker,
        overflow=OverflowPolicy.CLOSE,
        send_buffer_limit=config.send_buffer_limit,
        max_id_bytes=config.max_id_bytes,
        max_rooms=config.max_rooms,
        history=history,
        history_max_bytes=config.history_max_bytes,
    )
