"""Direct frame writes for WebSockets served by uvicorn's default implementation.

Under ASGI every recipient of a broadcast costs one ``send`` event, and uvicorn builds and
writes a new frame for each (about 80% of a fan-out's CPU, measured).  When the socket is
served by uvicorn's websockets-sans-I/O protocol, roomcast can instead write the frame bytes it
built once (``Frame.wire``) straight to that connection's transport, exactly as uvicorn would
have written them.  The rules that keep this correct:

* Only uvicorn's ``WebSocketsSansIOProtocol`` is recognised, reached from Starlette's
  WebSocket through wrappers known to pass ``websocket.send`` events through unchanged
  (Starlette's exception-handling ``sender``).  Any other server or wrapper in between, e.g. a
  middleware that rewrites or counts WebSocket messages, gets the generic ASGI path.
* A frame is written directly only while uvicorn itself would write it at once: the handshake
  is complete, no close frame was sent, the transport is not closing and not paused.  When the
  socket applies back-pressure, the generic path (and roomcast's bounded backlog) takes over.
* Frames are written whole, so they interleave with uvicorn's own pings and close frames only
  at frame boundaries.  They are sent uncompressed, which RFC 7692 allows even when
  permessage-deflate was negotiated (compression is chosen per message).

``ConnectionManager(direct_writes=False)`` turns this off.

The same walk finds the socket behind a connection so that a close the client never completes
can be cut short (``find_uvicorn_transport``): under all three of uvicorn's WebSocket
implementations the protocol object that owns ``send`` holds the connection's asyncio
transport, whose ``abort()`` drops the socket (uvicorn's ``connection_lost`` then runs as for
any lost client).  This is independent of ``direct_writes``.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

__all__ = ["SocketTransport", "find_uvicorn_protocol", "find_uvicorn_transport"]

_TRANSPARENT_WRAPPERS = frozenset(
    {"wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender"}
)
_MAX_DEPTH = 4

# uvicorn's other WebSocket protocols, with the name of their ASGI send method.  They are
# looked up in sys.modules, never imported: a server that uses one has imported it, and
# importing the legacy one warns (it is deprecated).
_OTHER_PROTOCOLS = (
    ("uvicorn.protocols.websockets.wsproto_impl", "WSProtocol", "send"),
    ("uvicorn.protocols.websockets.websockets_impl", "WebSocketProtocol", "asgi_send"),
)


class SocketTransport(Protocol):
    """What roomcast uses of a connection's socket transport (asyncio's or uvloop's)."""

    def abort(self) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def _protocol_class() -> type | None:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # pragma: no cover - uvicorn without the websockets package
        return None
    return WebSocketsSansIOProtocol


def _bound_send(send: Any) -> Any | None:
    """The bound method behind ``send`` and at most a few known pass-through wrappers, or None
    at anything else."""
    for _ in range(_MAX_DEPTH):
        if getattr(send, "__self__", None) is not None:
            return send
        if getattr(send, "__qualname__", None) not in _TRANSPARENT_WRAPPERS:
            return None
        inner = [
            cell.cell_contents
            for cell in getattr(send, "__closure__", None) or ()
            if callable(cell.cell_contents)
        ]
        if len(inner) != 1:
            return None
        send = inner[0]
    return None


def _is_send_of(method: Any, cls: type, name: str) -> bool:
    """Whether ``method`` is ``cls.<name>`` bound to an instance of exactly ``cls``."""
    return type(method.__self__) is cls and getattr(method, "__func__", None) is getattr(
        cls, name, None
    )


def find_uvicorn_protocol(send: Any) -> Any | None:
    """The uvicorn protocol behind an ASGI ``send`` callable, or None if there is none.

    Follows at most a few known pass-through wrappers; gives up at anything else.
    """
    protocol_class = _protocol_class()
    method = _bound_send(send)
    if protocol_class is None or method is None:
        return None
    return method.__self__ if _is_send_of(method, protocol_class, "send") else None


def find_uvicorn_transport(send: Any) -> SocketTransport | None:
    """The socket transport of the connection behind an ASGI ``send`` callable, or None.

    Recognises all three of uvicorn's WebSocket protocols (websockets-sansio, wsproto, and the
    legacy websockets one), reached through the same known wrappers as
    ``find_uvicorn_protocol``; any other server or wrapper gives None.
    """
    method = _bound_send(send)
    if method is None:
        return None
    candidates: list[tuple[type | None, str]] = [(_protocol_class(), "send")]
    for module_name, class_name, method_name in _OTHER_PROTOCOLS:
        module = sys.modules.get(module_name)
        candidates.append((getattr(module, class_name, None), method_name))
    for cls, name in candidates:
        if cls is not None and _is_send_of(method, cls, name):
            transport = getattr(method.__self__, "transport", None)
            return transport if callable(getattr(transport, "abort", None)) else None
    return None
