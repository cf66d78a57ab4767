"""Errors and close codes: the one place where roomcast says what went wrong.

Error tree (blame is in the name, as in h11: misuse by the caller vs bad data from outside)::

    RoomcastError                 base of everything roomcast raises on purpose
    ├── InvalidMessage            a message could not be parsed, validated or encoded
    │                             (also a ValueError, so generic handlers still work)
    ├── InvalidIdentifier         a room or user id that is not a short non-empty str
    │                             (also a ValueError)
    ├── ConnectionStateError      a call that does not fit the connection's state, such as
    │                             connecting the same websocket twice
    ├── CapacityExceeded          a limit of this process is reached (total rooms); the
    │                             same call may succeed later
    └── BrokerUnavailable         the message broker (Redis) cannot take a publish now
                                  (also a ConnectionError)

``roomcast.brokers.envelope.InvalidEnvelope`` (an InvalidMessage) is a bad message on a broker
channel.
``roomcast.auth.AuthenticationError`` (a RoomcastError) refuses a client, with the HTTP status
to refuse it with; ``roomcast.fastapi.room_rules.RoomRefused``, one of them, is a room the
rules refuse, with their stable ``cause``.
``roomcast.client.ClientError`` (a RoomcastError) heads the Python client's errors, drawn in
``roomcast/client/errors.py``.

Close codes are named values so that clients, docs and tests agree on them.  1000-1015 are
RFC 6455's; 4000-4999 is the range the RFC leaves to applications.
"""

from __future__ import annotations

from enum import IntEnum


class RoomcastError(Exception):
    """Base class of every error roomcast raises deliberately."""


class InvalidMessage(RoomcastError, ValueError):
    """A message could not be parsed, validated or encoded.

    Raised by ``WSMessage.from_json`` for input from the wire and by the send methods for a
    payload that cannot be encoded; the text says which field or step failed.
    """


class InvalidIdentifier(RoomcastError, ValueError):
    """A room or user id is not a non-empty string within the length limit (in UTF-8 bytes),
    or holds a control character."""


class CapacityExceeded(RoomcastError):
    """A limit of this process is reached (``max_rooms``); the same call may succeed once
    others have left.  Nothing was changed."""


class ConnectionStateError(RoomcastError):
    """The call does not fit the connection's current state."""


class BrokerUnavailable(RoomcastError, ConnectionError):
    """The broker is unreachable or refused a publish; the message did not leave this instance.

    Raised only by calls that wait for the broker (``RedisPubSub.publish_*``).  The
    distributed manager delivers locally anyway and counts the failure instead.
    """


class CloseCode(IntEnum):
    """WebSocket close codes that roomcast sends, with the reason it sends them."""

    NORMAL = 1000
    """The application closed the connection on purpose."""
    GOING_AWAY = 1001
    """The server is shutting down; reconnect (to another instance)."""
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    """A binary frame where text was expected, or the reverse."""
    INVALID_PAYLOAD = 1007
    """Text that is not valid UTF-8."""
    POLICY_VIOLATION = 1008
    """Authentication or rate policy refused the client."""
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    """Not now: used as the code of an error message (presence unavailable, Redis away or
    busy); a server at capacity refuses the upgrade with HTTP 503 instead."""
    TOKEN_EXPIRED = 4001
    """The client's token expired and no new one came within the grace period."""
    HEARTBEAT_TIMEOUT = 4002
    """The client answered no ping for ping_interval + pong_timeout (ASGI path; the native
    server drops such sockets without a close frame, since nobody would read it)."""
    SLOW_CONSUMER = 4008
    """The client did not read fast enough: its send buffer overflowed.

    The messages that did not fit are lost for this client; it should reconnect and resync.
    """
