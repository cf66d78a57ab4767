"""``Link``: the client's connection to the server, kept up across losses.

The I/O shell around ``ClientSession``: it dials with ``websockets``, feeds every frame to the
session and carries out what the session says (answer a request, hand an event to the
application, pong a server's ping, refresh the token).  One task owns the connection's life:
dial, rejoin every room, read until the connection ends, back off, dial again.  Each
connection adds a heartbeat task; a token refresh is one more task.  All of them are held in
one ``TaskSet`` and cancelled by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from roomcast.client.backoff import Backoff
from roomcast.client.errors import (
    ClientClosed,
    ClientError,
    ConnectionFailed,
    ConnectionLost,
    NotConnected,
    RequestTimeout,
)
from roomcast.client.events import ClientState, Disconnected, Event, Reconnected
from roomcast.client.inbox import Inbox
from roomcast.client.session import ClientSession, Outcome, Reply, Settled, TokenExpiring
from roomcast.errors import CloseCode
from roomcast.tasks import TaskSet

__all__ = ["LOCAL_HEARTBEAT_CLOSE", "Link", "Options", "TokenSource"]

logger = logging.getLogger("roomcast.client")

TokenSource = Callable[[], Awaitable[str]]
"""An async function that returns a fresh token."""

LOCAL_HEARTBEAT_CLOSE = 4000
"""The code a ``Disconnected`` reports when the server did not answer the client's ping."""
_ABNORMAL = 1006


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """The client's settings (documented on ``Client``)."""

    token: str | TokenSource | None = None
    ack_timeout: float = 5.0
    ping_interval: float = 15.0
    ping_timeout: float = 10.0
    connect_timeout: float = 10.0
    reconnect: Backoff | None = Backoff()  # noqa: RUF009 - frozen, so shared safely
    max_queue: int = 1024
    max_size: int | None = 64 * 2**20


class Link:
    """One client's connection, its requests in flight and the events for the application."""

    def __init__(self, url: str, options: Options) -> None:
        self.session = ClientSession()
        self.inbox: Inbox[Event] = Inbox(options.max_queue)
        self._url = url
        self._options = options
        self._tasks = TaskSet()
        self._futures: dict[str, asyncio.Future[Any]] = {}
        self._state = ClientState.IDLE
        self._changed = asyncio.Event()
        self._first: asyncio.Future[None] | None = None
        self._ws: ClientConnection | None = None
        self._last_frame = 0.0
        self._stalled = False
        self._local_close: tuple[int, str] | None = None

    @property
    def state(self) -> ClientState:
        return self._state

    async def connect(self) -> None:
        """Start the connection's task if idle; return once connected."""
        if self._state is ClientState.CLOSED:
            raise ClientClosed("the client is closed")
        if self._state is ClientState.IDLE:
            self._first = asyncio.get_running_loop().create_future()
            self._set_state(ClientState.CONNECTING)
            self._tasks.spawn(self._run(), name="roomcast-client")
        assert self._first is not None
        await asyncio.shield(self._first)

    async def close(self) -> None:
        """Close for good: no reconnect; waiting requests and readers get ``ClientClosed``."""
        if self._state is ClientState.CLOSED and not self._tasks:
            return
        self._set_state(ClientState.CLOSED)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        await self._tasks.cancel_all()
        self._finish()

    async def call(
        self,
        make: Callable[[], tuple[str, str]],
        ws: ClientConnection | None = None,
        bounded: bool = True,
    ) -> Any:
        """Send the request ``make()`` writes (once connected, or on ``ws``) and return its
        answer, within ``ack_timeout`` if ``bounded``."""
        timeout = self._options.ack_timeout if bounded else None
        try:
            async with asyncio.timeout(timeout):
                if ws is None:
                    ws = await self._wait_open()
                event_id, text = make()
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                self._futures[event_id] = future
                try:
                    await ws.send(text)
                    return await future
                except ConnectionClosed:
                    raise ConnectionLost("the connection was lost") from None
                finally:
                    if self._futures.pop(event_id, None) is not None:  # not answered
                        self.session.abandon(event_id)
        except TimeoutError as exc:
            if isinstance(exc, ClientError):
                raise
            raise RequestTimeout(f"no answer within {self._options.ack_timeout:g} s") from None

    async def refresh_token(self) -> None:
        """Send a fresh token from the token function."""
        token = self._options.token
        if not callable(token):
            raise ClientError("refresh_token needs a token function")
        fresh = await token()
        await self.call(lambda: self.session.auth(fresh))

    async def _wait_open(self) -> ClientConnection:
        while True:
            if self._state is ClientState.OPEN and self._ws is not None:
                return self._ws
            if self._state is ClientState.CLOSED:
                raise ClientClosed("the client is closed")
            if self._state is ClientState.IDLE:
                raise NotConnected("call connect() first")
            await self._changed.wait()

    def _set_state(self, state: ClientState) -> None:
        self._state = state
        self._changed.set()  # wakes everyone waiting for a change; later waiters get a new one
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ the connection's life

    async def _run(self) -> None:
        backoff = self._options.reconnect
        attempt = 0  # failed attempts since the last open
        opened = False
        while True:
            permanent, lost = False, True
            self._local_close = None
            try:
                ws = await self._dial()
            except Exception as exc:
                if not opened:
                    self._set_state(ClientState.IDLE)
                    failure = ConnectionFailed(_describe(exc))
                    failure.__cause__ = exc
                    assert self._first is not None
                    self._first.set_exception(failure)
                    return
                code, reason, lost = _ABNORMAL, _describe(exc), False
                permanent = self._permanent(exc)
                logger.info("reconnection attempt %d failed: %s", attempt + 1, reason)
            else:
                code, reason, now_open = await self._serve(ws, opened, attempt + 1)
                if now_open:
                    opened, attempt = True, 0
            if self._state is ClientState.CLOSED:
                return
            attempt += 1
            will = self._will_reconnect(code, permanent, attempt)
            delay = backoff.delay(attempt) if will and backoff is not None else None
            self._set_state(ClientState.RECONNECTING if will else ClientState.CLOSED)
            if lost or not will:  # one event per loss, and one when the client gives up
                await self.inbox.put(Disconnected(code, reason, will, delay))
            if delay is None:
                self._finish()
                return
            await asyncio.sleep(delay)

    async def _dial(self) -> ClientConnection:
        options = self._options
        async with asyncio.timeout(options.connect_timeout):
            token = await options.token() if callable(options.token) else options.token
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return await connect(
                self._url,
                additional_headers=headers,
                open_timeout=None,
                ping_interval=None,  # the client pings with messages, see _heartbeat
                close_timeout=5,
                max_size=options.max_size,
            )

    async def _serve(
        self, ws: ClientConnection, reconnected: bool, attempts: int
    ) -> tuple[int, str, bool]:
        """Rejoin, then read until the connection ends; returns its close code and reason,
        and whether it opened."""
        self._ws = ws
        self._last_frame = asyncio.get_running_loop().time()
        reader = self._tasks.spawn(self._read(ws), name="roomcast-client-reader")
        heartbeat = None
        if self._options.ping_interval > 0:
            heartbeat = self._tasks.spawn(self._heartbeat(ws), name="roomcast-client-heartbeat")
        opened = False
        try:
            failure = await self._rejoin(ws)
            if failure is None:
                opened = True
                self._set_state(ClientState.OPEN)
                if self._first is not None and not self._first.done():
                    self._first.set_result(None)
                if reconnected:
                    await self.inbox.put(Reconnected(attempts))
            elif failure is RequestTimeout:
                self._abort(ws, _ABNORMAL, "a rejoin was not answered in time")
            await reader  # (ends at once if the connection was lost while rejoining)
        finally:
            for task in (reader, heartbeat):
                if task is not None:
                    task.cancel()
            self._ws = None
            self._lost()
        if self._local_close is not None:
            return (*self._local_close, opened)
        code = ws.close_code or _ABNORMAL
        reason = ws.close_reason or ("the connection dropped" if code == _ABNORMAL else "")
        return code, reason, opened

    async def _rejoin(self, ws: ClientConnection) -> type[ClientError] | None:
        """Rejoin every room from its last position; returns what went wrong, if the
        connection did (RequestTimeout, ConnectionLost)."""
        # A replay takes as long as the application takes to read it (the reader waits for
        # room in the inbox): with the heartbeat on, it is the judge of a dead server, which
        # does not count the time the application is behind; without, ack_timeout is.
        bounded = self._options.ping_interval <= 0
        rejoins = [
            self.call(functools.partial(self.session.rejoin, room, since), ws, bounded)
            for room, since in self.session.book.rejoins()
        ]
        failure: type[ClientError] | None = None
        for result in await asyncio.gather(*rejoins, return_exceptions=True):
            if isinstance(result, RequestTimeout | ConnectionLost):
                failure = type(result)
            elif isinstance(result, BaseException) and not isinstance(result, ClientError):
                raise result
        return failure  # (a refused rejoin was reported as Rejoined with its error)

    async def _read(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for raw in ws:
                self._last_frame = loop.time()
                for outcome in self.session.received(raw):
                    await self._carry_out(ws, outcome)
        except ConnectionClosed:
            pass
        finally:
            self._lost()  # at once: the rejoins wait for their answers without a time limit

    def _lost(self) -> None:
        """The connection ended: every request still waiting raises ConnectionLost."""
        for event_id in self.session.connection_lost():
            future = self._futures.pop(event_id, None)
            if future is not None and not future.done():
                future.set_exception(ConnectionLost("the connection was lost"))

    async def _carry_out(self, ws: ClientConnection, outcome: Outcome) -> None:
        if isinstance(outcome, Settled):
            future = self._futures.pop(outcome.event_id, None)
            if future is not None and not future.done():
                if outcome.error is not None:
                    future.set_exception(outcome.error)
                else:
                    future.set_result(outcome.result)
        elif isinstance(outcome, Reply):
            await ws.send(outcome.text)
        elif isinstance(outcome, TokenExpiring):
            if callable(self._options.token):
                self._tasks.spawn(self._refresh(), name="roomcast-client-token")
        else:
            # A full inbox makes this wait, and the socket goes unread meanwhile: the server
            # sees a slow consumer, instead of the client's memory growing.
            self._stalled = self.inbox.full
            await self.inbox.put(outcome)
            self._stalled = False

    async def _heartbeat(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        interval, timeout = self._options.ping_interval, self._options.ping_timeout
        with contextlib.suppress(ConnectionClosed):
            while True:
                wait = interval - (loop.time() - self._last_frame)
                if wait > 0 or self._stalled:  # (frames wait unread while the app is behind)
                    await asyncio.sleep(max(wait, interval / 4))
                    continue
                sent = loop.time()
                await ws.send(self.session.heartbeat())
                await asyncio.sleep(timeout)
                if self._last_frame < sent and not self._stalled:
                    self._abort(ws, LOCAL_HEARTBEAT_CLOSE, f"no answer to a ping in {timeout:g} s")
                    return

    async def _refresh(self) -> None:
        try:
            await self.refresh_token()
        except Exception as exc:
            logger.warning("token refresh failed: %s", exc)

    def _abort(self, ws: ClientConnection, code: int, reason: str) -> None:
        self._local_close = (code, reason)
        ws.transport.abort()

    def _permanent(self, exc: Exception) -> bool:
        """Whether a refused attempt will be refused again however long the client waits."""
        if isinstance(exc, InvalidURI):
            return True
        if isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            return status in (400, 404) or (status == 401 and not callable(self._options.token))
        return False

    def _will_reconnect(self, code: int, permanent: bool, attempt: int) -> bool:
        backoff = self._options.reconnect
        if backoff is None or permanent or backoff.gives_up(attempt):
            return False
        # An expired token is worth another attempt only if a fresh one can be had.
        return code != CloseCode.TOKEN_EXPIRED or callable(self._options.token)

    def _finish(self) -> None:
        """The client is closed: readers get what is left, requests and connect() fail."""
        self.inbox.close()
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ClientClosed("the client is closed"))
        self._futures.clear()
        if self._first is not None and not self._first.done():
            self._first.set_exception(ClientClosed("the client was closed"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"upgrade refused with HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "the connection attempt timed out"
    return str(exc) or type(exc).__name__
