"""Compatibility path: the broker contract is ``roomcast.brokers.base``, the in-memory broker
``roomcast.brokers.memory``."""

from roomcast.brokers.base import Broker, BrokerStats, Channels
from roomcast.brokers.memory import MemoryBroker, MemoryBus

__all__ = ["Broker", "BrokerStats", "Channels", "MemoryBroker", "MemoryBus"]
