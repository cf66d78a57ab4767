"""Compatibility path: ``RedisPubSub`` lives in ``roomcast.brokers.redis_pubsub``."""

from roomcast.brokers.redis_pubsub import RedisPubSub

__all__ = ["RedisPubSub"]
