"""A Python client of ``roomcast serve`` (asyncio, on ``websockets``: ``pip install
'roomcast[client]'``).

It keeps a connection up (application pings, reconnection with jittered backoff, a fresh token
when the server asks), rejoins its rooms after every reconnect from the last position it saw in
each, and says per room whether the missed messages were recovered::

    from roomcast.client import Client, Message, Rejoined

    async with Client("ws://127.0.0.1:8000/ws", user_id="ann") as client:
        await client.join("lobby")
        await client.publish("lobby", {"text": "hi"})
        async for event in client:
            if isinstance(event, Message):
                print(event.room, event.sender, event.data)
            elif isinstance(event, Rejoined) and not event.recovered:
                reload(event.room)  # a gap: reload the room's state

See docs/python-client.md.
"""

from roomcast.client.backoff import Backoff
from roomcast.client.client import Client
from roomcast.client.errors import (
    ClientClosed,
    ClientError,
    ConnectionFailed,
    ConnectionLost,
    NotConnected,
    RequestRefused,
    RequestTimeout,
)
from roomcast.client.events import (
    ClientState,
    Disconnected,
    Event,
    History,
    Joined,
    Message,
    Position,
    Reconnected,
    Rejoined,
    ServerMessage,
)
from roomcast.client.link import LOCAL_HEARTBEAT_CLOSE, TokenSource

__all__ = [
    "LOCAL_HEARTBEAT_CLOSE",
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientState",
    "ConnectionFailed",
    "ConnectionLost",
    "Disconnected",
    "Event",
    "History",
    "Joined",
    "Message",
    "NotConnected",
    "Position",
    "Reconnected",
    "Rejoined",
    "RequestRefused",
    "RequestTimeout",
    "ServerMessage",
    "TokenSource",
]
