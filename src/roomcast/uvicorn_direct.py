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
"""

from __future__ import annotations

from typing import Any

__all__ = ["find_uvicorn_protocol"]

_TRANSPARENT_WRAPPERS = frozenset(
    {"wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender"}
)
_MAX_DEPTH = 4


def _protocol_class() -> type | None:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # pragma: no cover - uvicorn without the websockets package
        return None
    return WebSocketsSansIOProtocol


def find_uvicorn_protocol(send: Any) -> Any | None:
    """The uvicorn protocol behind an ASGI ``send`` callable, or None if there is none.

    Follows at most a few known pass-through wrappers; gives up at anything else.
    """
    protocol_class = _protocol_class()
    if protocol_class is None:
        return None
    for _ in range(_MAX_DEPTH):
        owner = getattr(send, "__self__", None)
        if owner is not None:
            if type(owner) is protocol_class and getattr(send, "__func__", None) is (
                protocol_class.send
            ):
                return owner
            return None
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
