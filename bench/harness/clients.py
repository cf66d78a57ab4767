"""The load-generating client: one worker process of many, steered by the driver.

Each worker process runs its own uvloop event loop, opens its share of the connections from its
own source address (127.0.x.y, so ephemeral ports do not run out), and records for every
broadcast message (``"seq|send_time|..."``) the arrival time at each connection.  The driver
steers it over a ``multiprocessing`` pipe with small tuples (see ``_Worker.handle``).

Two client implementations (``WorkerConfig.client``; ``fanout.py --client``):

- ``picows`` (default): picows' Cython frame parser calls ``on_ws_frame`` once per message; the
  lightest Python client measured here (see bench/README.md).
- ``sansio``: websockets' sans-I/O ``ClientProtocol`` over a plain ``asyncio.Protocol``.

Neither offers permessage-deflate, so the server sends uncompressed frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from array import array
from multiprocessing.connection import Connection as Pipe
from typing import Any, cast

import uvloop

from harness.limits import bound_socket, raise_nofile
from harness.processes import answer_commands, die_with_parent

__all__ = ["Recorder", "WorkerConfig", "run_worker"]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What one worker process connects, and how."""

    host: str
    port: int
    path: str
    source_address: str
    connections: int
    client: str = "picows"
    protocol: str = "ws"
    """``ws``: plain WebSocket messages; ``socketio``: Engine.IO v4 / Socket.IO v5 packets
    over the WebSocket (picows client only)."""
    concurrency: int = 100
    """Handshakes in flight at once (per worker): keeps the server's accept backlog short."""
    slow: bool = False
    """Never read after the handshake (a client that stopped reading), with a tiny SO_RCVBUF."""
    rcvbuf: int = 4096
    cpus: tuple[int, ...] = ()
    """CPUs this worker may run on (empty: any)."""
    connect_timeout: float = 30.0


class Recorder:
    """Arrival times per message sequence number, shared by all connections of a worker."""

    __slots__ = ("arrivals", "close_codes", "disconnected", "frames", "send_times")

    def __init__(self) -> None:
        self.arrivals: dict[int, array[float]] = {}
        self.send_times: dict[int, float] = {}
        self.frames = 0
        self.close_codes: list[int] = []
        self.disconnected = 0

    def record(self, payload: bytes, now: float) -> None:
        """Note a message ``"seq|send_time|..."``, bare or as a JSON string inside an
        envelope (roomcast's ``"data":"seq|..."``, Socket.IO's ``42["m","seq|..."]``): the
        sequence number starts after the last ``"`` before the first ``|``."""
        end = payload.find(b"|")
        if end < 0:
            return  # not a benchmark message
        self.frames += 1
        seq = int(payload[payload.rfind(b'"', 0, end) + 1 : end])
        arrivals = self.arrivals.get(seq)
        if arrivals is None:
            arrivals = self.arrivals[seq] = array("d")
            self.send_times[seq] = float(payload[end + 1 : payload.find(b"|", end + 1)])
        arrivals.append(now)

    def report(self, first_seq: int, last_seq: int) -> dict[int, tuple[float, bytes]]:
        """Latencies (seconds, sorted) per seq in ``[first_seq, last_seq]``; forgets them."""
        out: dict[int, tuple[float, bytes]] = {}
        for seq in range(first_seq, last_seq + 1):
            arrivals = self.arrivals.pop(seq, None)
            if arrivals is None:
                continue
            sent = self.send_times.pop(seq)
            latencies = array("d", sorted(t - sent for t in arrivals))
            out[seq] = (sent, latencies.tobytes())
        return out

    def record_close(self, payload: bytes) -> None:
        self.close_codes.append(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005)


def _make_socket(config: WorkerConfig) -> socket.socket:
    # A slow client's small SO_RCVBUF is set before connect(), so its advertised window stays
    # small.
    return bound_socket(config.source_address, config.rcvbuf if config.slow else 0)


# ------------------------------------------------------------------ picows client


def _picows_listener_class() -> type[Any]:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport

    text, close = WSMsgType.TEXT, WSMsgType.CLOSE

    class PicowsClient(WSListener):
        def __init__(self, recorder: Recorder, slow: bool) -> None:
            super().__init__()
            self.recorder = recorder
            self.slow = slow
            self.transport: WSTransport | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport
            if self.slow:
                transport.underlying_transport.pause_reading()

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            kind = frame.msg_type
            if kind is text:
                self.recorder.record(frame.get_payload_as_bytes(), time.time())
            elif kind is close:
                self.recorder.record_close(frame.get_payload_as_bytes())
                transport.send_close()
                transport.disconnect()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            self.recorder.disconnected += 1

        def resume_reading(self) -> None:
            if self.transport is not None and not self.transport.is_disconnected:
                self.transport.underlying_transport.resume_reading()

        def close(self) -> None:
            if self.transport is not None:
                self.transport.disconnect(graceful=False)

    return PicowsClient


def _socketio_listener_class() -> type[Any]:
    """The picows client speaking Engine.IO v4 / Socket.IO v5 on the default namespace: it
    answers the open packet ``0{...}`` with a namespace connect ``40``, pings ``2`` with pongs
    ``3``, and records the events ``42["m","seq|..."]``."""
    from picows import WSFrame, WSMsgType, WSTransport

    base = _picows_listener_class()
    text, close = WSMsgType.TEXT, WSMsgType.CLOSE

    class SocketIOClient(base):  # type: ignore[misc, valid-type]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            kind = frame.msg_type
            if kind is text:
                payload = frame.get_payload_as_bytes()
                if payload.startswith(b"42"):
                    self.recorder.record(payload, time.time())
                elif payload == b"2":
                    transport.send(text, b"3")
                elif payload.startswith(b"0"):
                    transport.send(text, b"40")
            elif kind is close:
                self.recorder.record_close(frame.get_payload_as_bytes())
                transport.send_close()
                transport.disconnect()

    return SocketIOClient


async def _connect_picows(config: WorkerConfig, recorder: Recorder, listener: type[Any]) -> Any:
    from picows import ws_connect

    url = f"ws://{config.host}:{config.port}{config.path}"
    _, client = await ws_connect(
        lambda: listener(recorder, config.slow),
        url,
        socket_factory=lambda _url: _make_socket(config),
        websocket_handshake_timeout=config.connect_timeout,
        read_buffer_init_size=4096,
        logger_name="bench",
    )
    return client


# ------------------------------------------------------------------ websockets sans-I/O client


def _sansio_protocol_class() -> type[Any]:
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Response
    from websockets.uri import parse_uri

    text, close = Opcode.TEXT, Opcode.CLOSE

    class SansIOClient(asyncio.Protocol):
        def __init__(self, uri: str, recorder: Recorder, slow: bool) -> None:
            self.protocol = ClientProtocol(parse_uri(uri))  # no extensions: no compression
            self.recorder = recorder
            self.slow = slow
            self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
            self.protocol.send_request(self.protocol.connect())
            self._flush()

        def _flush(self) -> None:
            assert self.transport is not None
            data = self.protocol.data_to_send()
            if data:
                payload = b"".join(data)
                if payload:
                    self.transport.write(payload)

        def data_received(self, data: bytes) -> None:
            self.protocol.receive_data(data)
            recorder = self.recorder
            for event in self.protocol.events_received():
                if type(event) is Frame:
                    if event.opcode is text:
                        recorder.record(bytes(event.data), time.time())
                    elif event.opcode is close:
                        recorder.record_close(bytes(event.data))
                elif isinstance(event, Response) and not self.open.done():
                    if self.protocol.handshake_exc is not None:
                        self.open.set_exception(self.protocol.handshake_exc)
                    else:
                        self.open.set_result(None)
                        if self.slow:
                            assert self.transport is not None
                            self.transport.pause_reading()
            self._flush()
            if self.protocol.close_expected() and self.transport is not None:
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.recorder.disconnected += 1
            if not self.open.done():
                self.open.set_exception(exc or ConnectionError("closed during handshake"))

        def resume_reading(self) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

        def close(self) -> None:
            if self.transport is not None:
                self.transport.abort()

    return SansIOClient


async def _connect_sansio(config: WorkerConfig, recorder: Recorder, protocol: type[Any]) -> Any:
    loop = asyncio.get_running_loop()
    sock = _make_socket(config)
    try:
        await loop.sock_connect(sock, (config.host, config.port))
    except BaseException:
        sock.close()
        raise
    uri = f"ws://{config.host}:{config.port}{config.path}"
    _, client = await loop.create_connection(
        lambda: protocol(uri, recorder, config.slow), sock=sock
    )
    await client.open
    return client


# ------------------------------------------------------------------ the worker


class _Worker:
    def __init__(self, config: WorkerConfig, pipe: Pipe) -> None:
        self.config = config
        self.pipe = pipe
        self.recorder = Recorder()
        self.clients: list[Any] = []
        self.failures: list[str] = []
        self.done = asyncio.Event()

    async def connect_all(self, spread: float) -> dict[str, Any]:
        """Open the connections, starting them at an even pace over ``spread`` seconds."""
        config = self.config
        if config.client == "picows":
            connect: Any = _connect_picows
            if config.protocol == "socketio":
                kind = _socketio_listener_class()
            else:
                kind = _picows_listener_class()
        elif config.client == "sansio":
            connect = _connect_sansio
            kind = _sansio_protocol_class()
        else:
            raise ValueError(f"unknown client {config.client!r}")
        gate = asyncio.Semaphore(config.concurrency)
        loop = asyncio.get_running_loop()
        handshakes = array("d")

        async def one(start_at: float) -> None:
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            for attempt in range(3):
                async with gate:
                    began = loop.time()
                    try:
                        async with asyncio.timeout(config.connect_timeout):
                            client = await connect(config, self.recorder, kind)
                    except Exception as exc:
                        if attempt == 2:
                            self.failures.append(repr(exc))
                            return
                    else:
                        handshakes.append(loop.time() - began)
                        self.clients.append(client)
                        return
                await asyncio.sleep(0.5)

        started = loop.time()
        step = spread / max(1, config.connections)
        await asyncio.gather(*(one(started + i * step) for i in range(config.connections)))
        return {
            "connected": len(self.clients),
            "failed": len(self.failures),
            "elapsed_s": loop.time() - started,
            "handshake_s": handshakes.tobytes(),
        }

    async def resume(self, seconds: float) -> dict[str, Any]:
        """Start reading again (the slow client) and see what arrives within ``seconds``."""
        before = self.recorder.frames
        for client in self.clients:
            client.resume_reading()
        await asyncio.sleep(seconds)
        return {
            "frames_before_resume": before,
            "frames_after_resume": self.recorder.frames - before,
            "close_codes": list(self.recorder.close_codes),
            "disconnected": self.recorder.disconnected,
        }

    async def handle(self, command: tuple[Any, ...]) -> Any:
        name = command[0]
        if name == "connect":
            return await self.connect_all(command[1])
        if name == "frames":
            return self.recorder.frames
        if name == "report":
            return self.recorder.report(command[1], command[2])
        if name == "resume":
            return await self.resume(command[1])
        if name == "state":
            return {
                "frames": self.recorder.frames,
                "close_codes": list(self.recorder.close_codes),
                "disconnected": self.recorder.disconnected,
                "failures": self.failures[:5],
            }
        if name == "exit":
            for client in self.clients:
                with contextlib.suppress(Exception):
                    client.close()
            self.done.set()
            return None
        raise ValueError(f"unknown command {name!r}")

    async def serve(self) -> None:
        await answer_commands(self.pipe, self.handle, self.done)


def run_worker(config: WorkerConfig, pipe: Pipe) -> None:
    """Entry point of a worker process."""
    die_with_parent()
    raise_nofile()
    if config.cpus:
        os.sched_setaffinity(0, config.cpus)
    uvloop.run(_Worker(config, pipe).serve())
