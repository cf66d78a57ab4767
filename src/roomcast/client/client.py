"""``Client``: what an application holds to talk to ``roomcast serve``."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from roomcast.client.backoff import Backoff
from roomcast.client.errors import ClientClosed
from roomcast.client.events import ClientState, Event, History, Joined, Position
from roomcast.client.inbox import InboxClosed
from roomcast.client.link import Link, Options, TokenSource

__all__ = ["Client"]


class Client:
    """A client of ``roomcast serve``: rooms, publishes, history, and recovery after a loss.

    Use it as ``async with Client(url, user_id="ann") as client:``, or call ``connect()`` and
    ``close()``.  Read what arrives with ``async for event in client`` (or ``recv()``):
    ``Message``, ``Rejoined``, ``Disconnected``, ``Reconnected``, ``ServerMessage``.

    Args:
        url: The server's WebSocket endpoint, ``ws://host:port/ws`` (or ``wss://``).
        user_id: Sent as ``?user_id=`` to servers without authentication.
        token: A token, or an async function returning one, sent as ``Authorization:
            Bearer``.  A function is called before every connection attempt and whenever the
            server says the token expired.
        ack_timeout: Seconds a request waits for its answer (waiting for a reconnect
            included).
        ping_interval: Seconds of silence from the server after which the client pings it
            (0: never).
        ping_timeout: Seconds after that ping within which some frame must come, or the
            client drops the connection and reconnects.
        connect_timeout: Seconds one connection attempt (getting the token included) may take.
        reconnect: The backoff between reconnection attempts; None: never reconnect.
        max_queue: Events held for the application.  When it holds this many, the client
            stops reading the socket until the application reads: the server then sees a
            slow consumer, and the client recovers what it missed once it reconnects.
        max_size: The largest frame accepted from the server, in bytes (None: no limit).
    """

    def __init__(
        self,
        url: str,
        *,
        user_id: str | None = None,
        token: str | TokenSource | None = None,
        ack_timeout: float = 5.0,
        ping_interval: float = 15.0,
        ping_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        reconnect: Backoff | None = Backoff(),  # noqa: B008 - frozen, so shared safely
        max_queue: int = 1024,
        max_size: int | None = 64 * 2**20,
    ) -> None:
        options = Options(
            token=token,
            ack_timeout=ack_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            connect_timeout=connect_timeout,
            reconnect=reconnect,
            max_queue=max_queue,
            max_size=max_size,
        )
        self._link = Link(_endpoint(url, user_id), options)
        self._session = self._link.session

    @property
    def state(self) -> ClientState:
        """Where the client is: idle, connecting, open, reconnecting or closed."""
        return self._link.state

    @property
    def rooms(self) -> list[str]:
        """The rooms the client is in (and rejoins after a reconnect)."""
        return self._session.book.joined_rooms()

    def position(self, room: str) -> Position | None:
        """The last position the client saw in ``room``: where it would rejoin from."""
        return self._session.book.position(room)

    @property
    def duplicates(self) -> int:
        """Room messages dropped because their offset was not above the last one seen."""
        return self._session.duplicates

    # ------------------------------------------------------------------ life

    async def connect(self) -> None:
        """Connect; returns once connected.  Losses after that are repaired by reconnecting.

        Raises:
            ConnectionFailed: the first attempt failed (``connect()`` may be called again).
            ClientClosed: the client was closed.
        """
        await self._link.connect()

    async def close(self) -> None:
        """Close for good (no reconnect): waiting requests get ``ClientClosed``, and reading
        ends once the events already received are read."""
        await self._link.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ events

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._link.inbox.get()
        except InboxClosed:
            raise StopAsyncIteration from None

    async def recv(self) -> Event:
        """The next event.

        Raises:
            ClientClosed: the client is closed and every event was read.
        """
        try:
            return await self._link.inbox.get()
        except InboxClosed:
            raise ClientClosed("the client is closed") from None

    # ------------------------------------------------------------------ requests

    async def join(self, room: str, *, since: Position | None = None) -> Joined:
        """Join ``room``.  After a reconnect the client rejoins it from its last position.

        Args:
            since: A position saved earlier: the server first replays what followed it (and
                says in ``Joined.recovered`` whether it could).
        """
        return cast(Joined, await self._link.call(lambda: self._session.join(room, since)))

    async def leave(self, room: str) -> None:
        """Leave ``room``; it is forgotten at once, whatever the answer."""
        await self._link.call(lambda: self._session.leave(room))

    async def publish(self, room: str, data: Any) -> Position | None:
        """Publish ``data`` (JSON-encodable) to the other members of ``room``.

        Returns:
            The message's position once the server acknowledged it (None in a room without
            history).
        """
        answer = await self._link.call(lambda: self._session.publish(room, data))
        return cast(Position | None, answer)

    async def history(
        self, room: str, *, since: Position | None = None, limit: int | None = None
    ) -> History:
        """Read ``room``'s history without joining: the latest ``limit`` messages, or those
        after ``since`` (at most ``limit``)."""
        answer = await self._link.call(lambda: self._session.history(room, since, limit))
        return cast(History, answer)

    async def ping(self) -> float:
        """A round trip to the server; returns the seconds it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._link.call(self._session.ping)
        return loop.time() - started

    async def refresh_token(self) -> None:
        """Send a fresh token from the token function now (the client does this by itself
        when the server says the token expired)."""
        await self._link.refresh_token()


def _endpoint(url: str, user_id: str | None) -> str:
    """``url`` with ``?user_id=`` set, when given."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"a roomcast URL starts with ws:// or wss://, not {url!r}")
    if user_id is None:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "user_id"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("user_id", user_id)])))
