"""A TCP proxy in front of a server whose connections a test can cut: a network drop as both
ends see it (a reset, no close frame), for async tests (``Cutter``) and, run in a thread of
its own, for the browser tests (``cutter_thread``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

__all__ = ["Cutter", "ThreadedCutter", "cutter_thread"]


class Cutter:
    """A TCP proxy to a server whose connections the test can cut (reset, no close frame),
    and which can refuse new ones for a while: a network drop as both ends see it."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.refusing = False
        self._pipes: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> Cutter:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every connection through the proxy (set ``refusing`` to refuse new ones)."""
        for writer in self._pipes:
            writer.transport.abort()
        self._pipes.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:  # the server is away: so is the connection
            writer.transport.abort()
            return
        self._pipes += [writer, upstream]

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(copy(reader, upstream), copy(upstream_reader, writer))


class ThreadedCutter:
    """A ``Cutter`` driven from synchronous code (its loop runs in another thread)."""

    def __init__(self, cutter: Cutter, loop: asyncio.AbstractEventLoop) -> None:
        self._cutter = cutter
        self._loop = loop
        self.port = cutter.port

    def cut(self) -> None:
        """Reset every connection, and refuse new ones until ``restore()``."""
        self._run(refusing=True)

    def restore(self) -> None:
        """Let connections through again."""
        self._run(refusing=False)

    def _run(self, refusing: bool) -> None:
        async def change() -> None:
            self._cutter.refusing = refusing
            if refusing:
                self._cutter.cut()

        asyncio.run_coroutine_threadsafe(change(), self._loop).result(10)


@contextlib.contextmanager
def cutter_thread(port: int) -> Iterator[ThreadedCutter]:
    """A ``Cutter`` to ``port`` in a thread of its own, closed on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cutter", daemon=True)
    thread.start()
    cutter = Cutter(port)
    try:
        asyncio.run_coroutine_threadsafe(cutter.__aenter__(), loop).result(10)
        yield ThreadedCutter(cutter, loop)
        asyncio.run_coroutine_threadsafe(cutter.__aexit__(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
