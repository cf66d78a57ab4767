"""What the client raises, split by blame as in ``roomcast.errors``::

ClientError (a RoomcastError)
├── NotConnected        a request before connect(): the caller's mistake
├── ClientClosed        the client was closed (by close(), or for good by the server)
├── ConnectionFailed    the first connection attempt failed (also a ConnectionError)
├── ConnectionLost      the connection dropped before the answer came: the request may or
│                       may not have been carried out (also a ConnectionError)
├── RequestTimeout      no answer within ack_timeout (also a TimeoutError)
└── RequestRefused      the server answered with an error: ``code`` and ``reply`` say why
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from roomcast.errors import RoomcastError

__all__ = [
    "ClientClosed",
    "ClientError",
    "ConnectionFailed",
    "ConnectionLost",
    "NotConnected",
    "RequestRefused",
    "RequestTimeout",
]


class ClientError(RoomcastError):
    """Base of every error the client raises."""


class NotConnected(ClientError):
    """A request was made before ``connect()``."""


class ClientClosed(ClientError):
    """The client is closed: by ``close()``, or because it will not reconnect."""


class ConnectionFailed(ClientError, ConnectionError):
    """The first connection attempt failed (refused, unreachable, timed out, bad token).

    Later losses are repaired by reconnecting instead.
    """


class ConnectionLost(ClientError, ConnectionError):
    """The connection dropped while the request waited for its answer.

    The server may or may not have carried it out: a publish may have reached the room.
    """


class RequestTimeout(ClientError, TimeoutError):
    """No answer within ``ack_timeout`` (including time spent waiting for a reconnect)."""


class RequestRefused(ClientError):
    """The server answered a request with an ``error``.

    Attributes:
        code: The server's error code (1008 refused by policy, 1003 malformed, 1013 try
            again later, ...), or None.
        reply: The whole error frame.
    """

    def __init__(self, message: str, code: int | None, reply: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply
