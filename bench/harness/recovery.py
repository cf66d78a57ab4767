"""The recovering client: one worker process of many, steered by the driver (``history.py``'s
recovery storm).

Each connection joins the room with a ``join`` message (not through the path), keeps the
room's position it has seen (the join's ``ack``, then every ``room_message``'s ``offset`` and
``epoch``), and checks the offsets as they come: one lower than or equal to the last seen is a
duplicate, a jump of more than one is that many messages missing.  On ``cut`` every socket is
aborted with an RST (``SO_LINGER`` 0, no close frame); on ``reconnect`` every connection opens
again, to another server if asked, and joins with ``since`` = its last position: the missed
messages must come before the ``ack``, which says ``"recovered": true``.  ``verify`` counts,
against the room's final position, what every connection lacks or got twice.

Every message's data is ``harness.message``'s ``"seq|send_time|..."``: ``offset - seq`` must be
the same for every message of the run (one position per publish), which the worker collects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import struct
import time
from array import array
from multiprocessing.connection import Connection as Pipe
from typing import Any

import uvloop

from harness.limits import bound_socket, raise_nofile
from harness.processes import answer_commands, die_with_parent

__all__ = ["Member", "RecoveryConfig", "run_worker"]

ROOM_MESSAGE = b'{"type":"room_message"'
LINGER_RST = struct.pack("ii", 1, 0)


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryConfig:
    """What one worker connects: ``connections`` clients of ``room``, first to
    ``ports[home]``, from ``source_address``."""

    ports: tuple[int, ...]
    home: int
    source_address: str
    connections: int
    room: str
    concurrency: int = 100
    connect_timeout: float = 30.0


class Member:
    """One client's view of the room: its position and what the offsets told it."""

    __slots__ = (
        "acked_at",
        "base",
        "cut",
        "duplicates",
        "epoch",
        "epoch_changes",
        "missing",
        "offset",
        "received",
        "recovered",
        "replayed",
        "transport",
    )

    def __init__(self) -> None:
        self.epoch: bytes | None = None
        self.offset = 0
        self.base = -1
        self.received = 0
        self.duplicates = 0
        self.missing = 0
        self.epoch_changes = 0
        self.recovered: bool | None = None
        self.replayed = 0
        self.acked_at = 0.0
        self.cut = False
        self.transport: Any = None

    def join_request(self, room: str) -> bytes:
        """``join``, with ``since`` once the member has a position."""
        request: dict[str, Any] = {"type": "join", "room": room, "event_id": "j"}
        if self.epoch is not None:
            request["since"] = {"epoch": self.epoch.decode(), "offset": self.offset}
        return json.dumps(request).encode()

    def message(self, offset: int, epoch: bytes) -> None:
        """A ``room_message`` at ``(epoch, offset)``."""
        self.received += 1
        if epoch != self.epoch:
            if self.epoch == b"" and self.offset == 0:
                self.epoch = epoch  # joined an empty room (epoch ""): its first epoch
            else:
                self.epoch_changes += 1
                self.epoch, self.offset = epoch, offset
                return
        if offset <= self.offset:
            self.duplicates += 1
        else:
            self.missing += offset - self.offset - 1
            self.offset = offset

    def acked(self, answer: dict[str, Any], now: float) -> None:
        """The join's ``ack``: the first sets the position; a rejoin's says what it replayed
        (the replay came before it)."""
        position = answer.get("position") or {}
        epoch, offset = str(position.get("epoch", "")).encode(), int(position.get("offset", 0))
        if self.base < 0:
            self.base, self.epoch, self.offset = offset, epoch, offset
        else:
            self.recovered = bool(answer.get("recovered"))
            self.replayed = int(answer.get("replayed", 0))
            if epoch == self.epoch and offset > self.offset:
                self.missing += offset - self.offset  # the ack is past what came before it
                self.offset = offset
        self.acked_at = now


def _listener_class() -> type[Any]:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport

    text = WSMsgType.TEXT

    class RecoveringClient(WSListener):
        def __init__(self, member: Member, worker: _Worker) -> None:
            super().__init__()
            self.member = member
            self.worker = worker

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.member.transport = transport
            transport.send(text, self.member.join_request(self.worker.config.room))

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is not text:
                return
            payload = frame.get_payload_as_bytes()
            if payload.startswith(ROOM_MESSAGE):
                # ... "data":"SEQ|send_time|...", ... "offset":N,"epoch":"E"}
                at = payload.rfind(b'"offset":')
                comma = payload.index(b",", at)
                offset = int(payload[at + 9 : comma])
                bar = payload.find(b"|")
                seq = int(payload[payload.rfind(b'"', 0, bar) + 1 : bar])
                self.worker.drift.add(offset - seq)
                self.member.message(offset, payload[comma + 10 : -2])
            else:
                self.worker.answer(self.member, json.loads(payload))

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if not self.member.cut:
                self.worker.dropped += 1

    return RecoveringClient


class _Worker:
    def __init__(self, config: RecoveryConfig, pipe: Pipe) -> None:
        self.config = config
        self.pipe = pipe
        self.members = [Member() for _ in range(config.connections)]
        self.listener = _listener_class()
        self.drift: set[int] = set()
        self.errors: list[str] = []
        self.dropped = 0
        self.acks = 0
        self.all_acked = asyncio.Event()
        self.done = asyncio.Event()

    def answer(self, member: Member, answer: dict[str, Any]) -> None:
        if answer.get("type") == "ack" and answer.get("ack_event_id") == "j":
            member.acked(answer, time.time())
            self.acks += 1
            if self.acks == len(self.members):
                self.all_acked.set()
        elif answer.get("type") == "error":
            self.errors.append(json.dumps(answer))

    async def connect_all(self, port: int, ack_wait: float) -> dict[str, Any]:
        """Open every member's connection to ``port`` (at most ``concurrency`` handshakes in
        flight), each joining as soon as it is open; wait for every join's ack."""
        from picows import ws_connect

        config = self.config
        gate = asyncio.Semaphore(config.concurrency)
        handshakes = array("d")
        failures: list[str] = []
        self.acks = 0
        self.all_acked.clear()
        loop = asyncio.get_running_loop()
        url = f"ws://127.0.0.1:{port}/ws"

        async def one(member: Member) -> None:
            for attempt in range(3):
                async with gate:
                    began = loop.time()
                    try:
                        async with asyncio.timeout(config.connect_timeout):
                            await ws_connect(
                                lambda: self.listener(member, self),
                                url,
                                socket_factory=lambda _url: bound_socket(config.source_address),
                                websocket_handshake_timeout=config.connect_timeout,
                                read_buffer_init_size=4096,
                                logger_name="bench",
                            )
                    except Exception as exc:
                        if attempt == 2:
                            failures.append(repr(exc))
                            return
                    else:
                        handshakes.append(loop.time() - began)
                        return
                await asyncio.sleep(0.5)

        for member in self.members:
            member.cut = False
        await asyncio.gather(*(one(m) for m in self.members))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ack_wait):
                await self.all_acked.wait()
        acked = [m.acked_at for m in self.members if m.acked_at]
        return {
            "connected": len(handshakes),
            "failed": len(failures),
            "failures": failures[:3],
            "acked": self.acks,
            "handshake_s": handshakes.tobytes(),
            "acked_at": array("d", acked).tobytes(),
            "recovered": sum(m.recovered is True for m in self.members),
            "not_recovered": sum(m.recovered is False for m in self.members),
            "replayed": sum(m.replayed for m in self.members),
            "errors": self.errors[:5],
            "error_count": len(self.errors),
        }

    def cut(self) -> int:
        """Abort every connection at once: an RST, no close frame."""
        cut = 0
        for member in self.members:
            transport, member.transport = member.transport, None
            if transport is None or transport.is_disconnected:
                continue
            member.cut = True
            with contextlib.suppress(OSError, AttributeError):
                sock = transport.underlying_transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            transport.disconnect(graceful=False)
            cut += 1
        for member in self.members:
            member.acked_at = 0.0
        return cut

    def verify(self, epoch: str, final: int) -> dict[str, Any]:
        """Against the room's final position: every member's missing and duplicate messages."""
        lost = duplicates = short = doubled = changed = 0
        examples: list[str] = []
        for index, member in enumerate(self.members):
            behind = final - member.offset if member.epoch == epoch.encode() else 0
            missing = member.missing + max(0, behind)
            lost += missing
            duplicates += member.duplicates
            short += missing > 0
            doubled += member.duplicates > 0
            changed += member.epoch_changes > 0
            if (missing or member.duplicates or member.epoch != epoch.encode()) and len(
                examples
            ) < 5:
                examples.append(
                    f"member {index}: base {member.base}, last {member.offset} of epoch "
                    f"{member.epoch!r}, received {member.received}, missing {missing}, "
                    f"duplicates {member.duplicates}, recovered {member.recovered}, "
                    f"replayed {member.replayed}"
                )
        return {
            "members": len(self.members),
            "lost": lost,
            "duplicates": duplicates,
            "members_short": short,
            "members_doubled": doubled,
            "members_epoch_changed": changed,
            "received": sum(m.received for m in self.members),
            "bases": sorted({m.base for m in self.members}),
            "drift": sorted(self.drift),
            "dropped": self.dropped,
            "examples": examples,
        }

    async def handle(self, command: tuple[Any, ...]) -> Any:
        name = command[0]
        if name == "connect":  # ("connect", shift, timeout): to ports[(home + shift) % n]
            ports = self.config.ports
            port = ports[(self.config.home + command[1]) % len(ports)]
            return await self.connect_all(port, command[2])
        if name == "cut":
            return self.cut()
        if name == "frames":
            return sum(m.received for m in self.members)
        if name == "verify":
            return self.verify(command[1], command[2])
        if name == "exit":
            self.cut()
            self.done.set()
            return None
        raise ValueError(f"unknown command {name!r}")

    async def serve(self) -> None:
        await answer_commands(self.pipe, self.handle, self.done)


def run_worker(config: RecoveryConfig, pipe: Pipe) -> None:
    """Entry point of a worker process (``workers.Workers(configs, run=run_worker)``)."""
    die_with_parent()
    raise_nofile()
    uvloop.run(_Worker(config, pipe).serve())
