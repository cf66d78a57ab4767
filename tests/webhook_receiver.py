"""A real webhook receiver for the dispatcher's tests: aiohttp.web on a loopback port.

It verifies each request's signature with ``signing.verify`` (401 when it does not hold),
records what it accepted, and misbehaves on demand: answer 500, hang until told otherwise,
answer late, or stop listening and come back on the same port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import socket
from collections.abc import Callable

from aiohttp import web

from roomcast.events.schema import LifecycleEvent, decode_events
from roomcast.events.signing import HEADER, SignatureError, verify
from tests.support import seconds


class Mode(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    """Answer 500."""
    HANG = "hang"
    """Answer nothing until the mode changes or the receiver stops."""


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One request as it arrived."""

    body: bytes
    headers: dict[str, str]


class Receiver:
    """A webhook endpoint at ``url`` that knows ``secret``."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.mode = Mode.OK
        self.delay = 0.0
        """Seconds to wait before answering (in OK mode)."""
        self.requests: list[Request] = []
        self.events: list[LifecycleEvent] = []
        """Events of accepted requests, in arrival order, duplicates included."""
        self.rejected: list[str] = []
        self._changed = asyncio.Event()
        self._unhang = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode is not Mode.HANG:
            self._unhang.set()

    async def start(self) -> None:
        """Listen (again) on ``port``; a free port the first time."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Stop listening and close every connection (hanging requests end first)."""
        self._unhang.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_until(self, condition: Callable[[], bool], within: float | None = None) -> None:
        """Wait until ``condition()`` holds after some request; fail after ``within`` seconds
        (10 time units by default)."""
        async with asyncio.timeout(seconds(10) if within is None else within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def unique_ids(self) -> list[str]:
        """Ids of the accepted events, first arrivals only, in arrival order."""
        return list(dict.fromkeys(event.id for event in self.events))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Request(body, dict(request.headers)))
        self._changed.set()
        try:
            try:
                verify(self.secret, body, request.headers.get(HEADER))
            except SignatureError as exc:
                self.rejected.append(str(exc))
                return web.Response(status=401)
            if self.mode is Mode.HANG:
                self._unhang.clear()
                await self._unhang.wait()
                return web.Response(status=503)
            if self.mode is Mode.FAIL:
                return web.Response(status=500, text="down for maintenance")
            if self.delay:
                await asyncio.sleep(self.delay)
            self.events.extend(decode_events(body))
            return web.Response(status=204)
        finally:
            self._changed.set()
