"""``events.py``'s client worker: connections that each name a user of their own and join a
room at the upgrade, all opened at once and all dropped at once, so that the driver can put
a CPU and Redis figure on one connect and one disconnect.

Each connection is ``/ws/r<k mod rooms>?user_id=<prefix><k>``: every connect is a first
arrival of its user (a ``connect`` and a ``join`` event, an ``occupied`` for a room's first
member) and every disconnect a last departure.  A drop sends a close frame (1000) and hangs
up without waiting for the answer, as a browser tab that closes does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from multiprocessing.connection import Connection as Pipe
from typing import Any

import uvloop

from harness.limits import bound_socket, raise_nofile
from harness.processes import answer_commands, die_with_parent

__all__ = ["ChurnConfig", "run_worker"]


@dataclasses.dataclass(frozen=True, slots=True)
class ChurnConfig:
    """One worker's connections."""

    port: int
    source_address: str
    connections: int
    user_prefix: str
    rooms: int
    concurrency: int = 100
    connect_timeout: float = 30.0


def _listener_class() -> type[Any]:
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

    class ChurnClient(WSListener):
        def __init__(self, worker: _Worker) -> None:
            super().__init__()
            self.worker = worker
            self.transport: WSTransport | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.disconnect()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            self.worker.gone()

        def drop(self) -> None:
            if self.transport is not None and not self.transport.is_disconnected:
                self.transport.send_close(WSCloseCode.OK)
                self.transport.disconnect()

    return ChurnClient


class _Worker:
    def __init__(self, config: ChurnConfig, pipe: Pipe) -> None:
        self.config = config
        self.pipe = pipe
        self.clients: list[Any] = []
        self.open = 0
        self.all_gone = asyncio.Event()
        self.done = asyncio.Event()
        self.listener = _listener_class()

    def gone(self) -> None:
        self.open -= 1
        if self.open == 0:
            self.all_gone.set()

    async def connect_all(self) -> dict[str, Any]:
        from picows import ws_connect

        config = self.config
        gate = asyncio.Semaphore(config.concurrency)
        failures: list[str] = []
        self.all_gone.clear()

        async def one(k: int) -> None:
            url = (
                f"ws://127.0.0.1:{config.port}/ws/r{k % config.rooms}"
                f"?user_id={config.user_prefix}{k}"
            )
            async with gate:
                try:
                    async with asyncio.timeout(config.connect_timeout):
                        _, client = await ws_connect(
                            lambda: self.listener(self),
                            url,
                            socket_factory=lambda _url: bound_socket(config.source_address),
                            read_buffer_init_size=4096,
                            logger_name="bench",
                        )
                except Exception as exc:
                    failures.append(repr(exc))
                    return
            self.open += 1
            self.clients.append(client)

        await asyncio.gather(*(one(k) for k in range(config.connections)))
        return {"connected": len(self.clients), "failed": len(failures), "errors": failures[:3]}

    async def drop_all(self, within: float) -> dict[str, Any]:
        """Close every connection; answer once the server hung up on each (or after
        ``within`` seconds)."""
        for client in self.clients:
            client.drop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.all_gone.wait()
        left, self.clients = self.open, []
        return {"left_open": left}

    async def handle(self, command: tuple[Any, ...]) -> Any:
        name = command[0]
        if name == "connect":
            return await self.connect_all()
        if name == "drop":
            return await self.drop_all(command[1])
        if name == "exit":
            for client in self.clients:
                with contextlib.suppress(Exception):
                    client.drop()
            self.done.set()
            return None
        raise ValueError(f"unknown command {name!r}")

    async def serve(self) -> None:
        await answer_commands(self.pipe, self.handle, self.done)


def run_worker(config: ChurnConfig, pipe: Pipe) -> None:
    """Entry point of a worker process."""
    die_with_parent()
    raise_nofile()
    uvloop.run(_Worker(config, pipe).serve())
