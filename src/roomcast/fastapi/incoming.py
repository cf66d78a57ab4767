"""What passes through a Starlette websocket, seen without the application's help.

The managers need to know things the application's endpoint code never tells them: that the
client said something (a sign of life for the heartbeat), that it answered a ping, and how a
connection ended (the close code of a lifecycle ``disconnect``).  Starlette's ``WebSocket``
reads every ASGI event through its ``_receive`` callable and writes through ``_send``;
wrapping those instance attributes shows the managers the events while the endpoint keeps
its ordinary ``receive_text()`` / ``close()`` code.  Without those attributes (another
framework) nothing is wrapped and the defaults apply (the application reports pongs itself;
a close nobody saw is "connection lost").

The data path is not touched: ``AsgiTransport`` took the raw send before ``watch_closes``
wraps ``_send``, so only the application's own sends and closes go through the wrapper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["watch_closes", "watch_incoming"]

_PONG_PREFIXES = ('{"type":"pong"', '{"type": "pong"')


def watch_incoming(websocket: Any, heard: Callable[[bool], None]) -> None:
    """Call ``heard(is_pong)`` for every message from the client.

    Application-level pongs (``{"type": "pong", ...}``) are consumed here instead of
    reaching the endpoint's ``receive_text()``: they are the heartbeat's, not the app's.
    """
    receive = getattr(websocket, "_receive", None)
    if receive is None:
        return

    async def receive_and_listen() -> Any:
        while True:
            event = await receive()
            if event.get("type") != "websocket.receive":
                return event
            text = event.get("text")
            is_pong = isinstance(text, str) and text.startswith(_PONG_PREFIXES)
            heard(is_pong)
            if not is_pong:
                return event

    websocket._receive = receive_and_listen


def watch_closes(websocket: Any, said: Callable[[int, str], None]) -> None:
    """Call ``said(code, reason)`` when the client's close reaches the endpoint (its
    ``websocket.disconnect`` event) and when the application closes the socket itself
    (``await websocket.close(code)``).  An empty reason becomes "client closed" / "closed
    by the application", so that a backend can tell who ended the connection."""
    receive = getattr(websocket, "_receive", None)
    send = getattr(websocket, "_send", None)
    if receive is None or send is None:
        return

    async def receive_and_watch() -> Any:
        event = await receive()
        if event.get("type") == "websocket.disconnect":
            said(int(event.get("code") or 1005), event.get("reason") or "client closed")
        return event

    async def send_and_watch(event: Any) -> None:
        if event.get("type") == "websocket.close":
            reason = event.get("reason") or "closed by the application"
            said(int(event.get("code") or 1000), reason)
        await send(event)

    websocket._receive = receive_and_watch
    websocket._send = send_and_watch
