"""A real hook backend for ``roomcast serve``'s tests: aiohttp.web on a loopback port.

Each hook (``/connect``, ``/join``, ``/publish``) answers with what the test sets: a JSON
object, or a misbehaviour (hang past any timeout, HTTP 500, a body that is not JSON).  Every
request is recorded, with whether its signature held (when the backend knows a secret).
"""

from __future__ import annotations

import asyncio
import enum
import json
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from roomcast.events.signing import HEADER, SignatureError, verify


class Trouble(enum.Enum):
    HANG = "hang"
    """Answer nothing for a minute (longer than any hook timeout)."""
    FAIL = "fail"
    """Answer HTTP 500."""
    GARBAGE = "garbage"
    """Answer 200 with a body that is not JSON."""


Answer = dict[str, Any] | Trouble
"""What a hook answers: a JSON object, or trouble."""


class Backend:
    """Hooks at ``url(hook)``; ``answers[hook]`` says what each answers (a function of the
    request's JSON, or a fixed answer)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret
        self.answers: dict[str, Answer | Callable[[dict[str, Any]], Answer]] = {
            "connect": {"allow": True, "user": "alice"},
            "join": {"allow": True},
            "publish": {"allow": True},
        }
        self.requests: dict[str, list[dict[str, Any]]] = {"connect": [], "join": [], "publish": []}
        self.unsigned = 0
        """Requests whose signature did not hold (with a secret)."""
        self.delay = 0.0
        """Seconds each answer waits."""
        self.in_flight = 0
        self.peak_in_flight = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, hook: str) -> str:
        return f"http://127.0.0.1:{self.port}/{hook}"

    async def start(self) -> None:
        app = web.Application()
        for hook in self.requests:
            app.router.add_post(f"/{hook}", self._handler(hook))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _handler(self, hook: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            if self.secret is not None:
                try:
                    verify(self.secret, body, request.headers.get(HEADER))
                except SignatureError:
                    self.unsigned += 1
                    return web.Response(status=401)
            asked = json.loads(body)
            self.requests[hook].append(asked)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                answer = self.answers[hook]
                if callable(answer):
                    answer = answer(asked)
                if answer is Trouble.HANG:
                    await asyncio.sleep(60)
                if answer is Trouble.FAIL:
                    return web.Response(status=500, text="boom")
                if answer is Trouble.GARBAGE:
                    return web.Response(status=200, text="<html>not json</html>")
                return web.json_response(answer)
            finally:
                self.in_flight -= 1

        return handle
