"""roomcast: real-time WebSocket messaging with rooms, users and encode-once fan-out.

The public names are documented in the README and docs/; they are also importable from
``library.components.realtime.websocket_manager``.  Importing roomcast imports no optional
dependency: Starlette, Redis and JWT support load only where they are used.
"""

from typing import TYPE_CHECKING, Any

from roomcast.auth import AuthenticationError, Authenticator, Identity, JWTAuthenticator
from roomcast.brokers.base import Broker, BrokerStats
from roomcast.brokers.memory import MemoryBroker, MemoryBus
from roomcast.connection import Connection, Delivery, Transport
from roomcast.errors import (
    BrokerUnavailable,
    CapacityExceeded,
    CloseCode,
    ConnectionStateError,
    InvalidIdentifier,
    InvalidMessage,
    RoomcastError,
)
from roomcast.events.schema import LifecycleEvent
from roomcast.fastapi.auth_manager import AuthConnectionManager, ConnectionConfig
from roomcast.fastapi.distributed import DistributedWebSocketManager
from roomcast.fastapi.lifecycle_settings import LifecycleSettings
from roomcast.fastapi.manager import ConnectionManager, ManagerStats, OverflowPolicy
from roomcast.fastapi.room_rules import RoomRefused
from roomcast.frame import Frame, encode
from roomcast.heartbeat import ConnectionHealth, HeartbeatManager
from roomcast.messages import (
    AckMessage,
    ErrorMessage,
    MessageType,
    PingMessage,
    PongMessage,
    WSMessage,
)

if TYPE_CHECKING:
    from roomcast.brokers.redis_pubsub import RedisPubSub as RedisPubSub

__version__ = "0.1.0"

_LAZY = {"RedisPubSub": "roomcast.brokers.redis_pubsub"}
"""Public names whose modules import an optional dependency (redis), loaded on first use.

They are not in ``__all__``, so that ``from roomcast import *`` works without the extra."""


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'roomcast' has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"roomcast.{name} needs the redis extra: pip install 'roomcast[redis]' ({exc})"
        ) from exc
    return getattr(module, name)


__all__ = [
    "AckMessage",
    "AuthConnectionManager",
    "AuthenticationError",
    "Authenticator",
    "Broker",
    "BrokerStats",
    "BrokerUnavailable",
    "CapacityExceeded",
    "CloseCode",
    "Connection",
    "ConnectionConfig",
    "ConnectionHealth",
    "ConnectionManager",
    "ConnectionStateError",
    "Delivery",
    "DistributedWebSocketManager",
    "ErrorMessage",
    "Frame",
    "HeartbeatManager",
    "Identity",
    "InvalidIdentifier",
    "InvalidMessage",
    "JWTAuthenticator",
    "LifecycleEvent",
    "LifecycleSettings",
    "ManagerStats",
    "MemoryBroker",
    "MemoryBus",
    "MessageType",
    "OverflowPolicy",
    "PingMessage",
    "PongMessage",
    "RoomRefused",
    "RoomcastError",
    "Transport",
    "WSMessage",
    "__version__",
    "encode",
]
