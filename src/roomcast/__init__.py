"""roomcast: real-time WebSocket messaging with rooms, users and encode-once fan-out.

The public names are the seed specification's (see the README); they are also importable from
``library.components.realtime.websocket_manager``.  Importing roomcast imports no optional
dependency: Starlette, Redis and JWT support load only where they are used.
"""

from roomcast.connection import Connection, Delivery, Transport
from roomcast.errors import (
    CloseCode,
    ConnectionStateError,
    InvalidIdentifier,
    InvalidMessage,
    RoomcastError,
)
from roomcast.frame import Frame, encode
from roomcast.manager import ConnectionManager, ManagerStats, OverflowPolicy
from roomcast.messages import (
    AckMessage,
    ErrorMessage,
    MessageType,
    PingMessage,
    PongMessage,
    WSMessage,
)

__version__ = "0.1.0"

__all__ = [
    "AckMessage",
    "CloseCode",
    "Connection",
    "ConnectionManager",
    "ConnectionStateError",
    "Delivery",
    "ErrorMessage",
    "Frame",
    "InvalidIdentifier",
    "InvalidMessage",
    "ManagerStats",
    "MessageType",
    "OverflowPolicy",
    "PingMessage",
    "PongMessage",
    "RoomcastError",
    "Transport",
    "WSMessage",
    "__version__",
    "encode",
]
