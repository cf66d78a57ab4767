"""Compatibility path: ``RedisPubSub`` lives in ``roomcast.brokers.redis``."""

from roomcast.brokers.redis import RedisPubSub

__all__ = ["RedisPubSub"]
