"""The ASGI transport against minimal ASGI-style senders with other suspension behaviours.

uvicorn (covered by the scenario tests) suspends only when its socket is paused.  Other ASGI
servers may yield on every send, or fail later; these senders reproduce such behaviour with
real coroutines on the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from roomcast import Delivery, encode
from roomcast.fastapi.asgi import AsgiTransport
from roomcast.tasks import TaskSet


class Peer:
    """Records events; ``gate`` (when cleared) holds sends, ``yield_each`` yields per send."""

    def __init__(self, *, yield_each: bool = False, fail_after: int | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.yield_each = yield_each
        self.fail_after = fail_after
        self.application_state = type("State", (), {"name": "CONNECTED"})()

    async def send(self, event: dict[str, Any]) -> None:
        if self.yield_each:
            await asyncio.sleep(0)
        await self.gate.wait()
        if self.fail_after is not None and len(self.events) >= self.fail_after:
            raise OSError("peer went away")
        self.events.append(event)

    async def accept(self, subprotocol: str | None = None) -> None:
        raise AssertionError("already accepted")

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.send({"type": "websocket.close", "code": code, "reason": reason})


def make(peer: Peer, tasks: TaskSet, lost: list[bool], limit: int = 100) -> AsgiTransport:
    return AsgiTransport(
        peer, tasks=tasks, on_lost=lambda: lost.append(True), limit=limit, close_timeout=1
    )


def texts(peer: Peer) -> list[Any]:
    return [event.get("text", event.get("code")) for event in peer.events]


async def test_sender_that_yields_every_time_gets_everything_in_order() -> None:
    """A sender that suspends on each send is driven by one writer task, in order."""
    peer, tasks, lost = Peer(yield_each=True), TaskSet(), list[bool]()
    transport = make(peer, tasks, lost)
    await transport.open()
    for word in ("a", "b", "c"):
        assert transport.send(encode(word)) is Delivery.ACCEPTED
    assert transport.buffered_bytes == 3
    await tasks.wait(within=1)
    assert texts(peer) == ["a", "b", "c"] and transport.buffered_bytes == 0 and not lost


async def test_backlog_over_the_limit_overflows() -> None:
    """While a send is held, frames queue up to the byte limit, then OVERFLOW."""
    peer, tasks, lost = Peer(), TaskSet(), list[bool]()
    peer.gate.clear()
    transport = make(peer, tasks, lost, limit=10)
    assert transport.send(encode("12345")) is Delivery.ACCEPTED  # held in flight
    assert transport.send(encode("12345")) is Delivery.ACCEPTED  # queued
    assert transport.send(encode("x")) is Delivery.OVERFLOW
    peer.gate.set()
    await tasks.wait(within=1)
    assert texts(peer) == ["12345", "12345"]


async def test_close_discards_held_frames_and_writes_only_the_close() -> None:
    """Closing while a send is held cancels it: the held frame is never written."""
    peer, tasks, lost = Peer(), TaskSet(), list[bool]()
    peer.gate.clear()
    transport = make(peer, tasks, lost)
    transport.send(encode("held"))
    transport.send(encode("queued"))
    transport.close(4008, "slow consumer")
    transport.close(4008, "twice is harmless")
    assert transport.send(encode("late")) is Delivery.CLOSED
    assert transport.buffered_bytes == 0
    await asyncio.sleep(0)
    peer.gate.set()
    await tasks.wait(within=1)
    assert texts(peer) == [4008] and not lost


async def test_failure_in_writer_reports_lost_once() -> None:
    """A send that fails inside the writer task reports the connection lost, once."""
    peer, tasks, lost = Peer(yield_each=True, fail_after=1), TaskSet(), list[bool]()
    transport = make(peer, tasks, lost)
    for word in ("ok", "fails", "dropped"):
        transport.send(encode(word))
    await tasks.wait(within=1)
    assert texts(peer) == ["ok"] and lost == [True]
    assert transport.send(encode("after")) is Delivery.CLOSED


async def test_close_that_cannot_be_written_gives_up_after_timeout() -> None:
    """A close held by a peer that never reads is abandoned after close_timeout and, with no
    socket to abort behind this sender, reported as unabortable."""
    peer, tasks, lost, unabortable = Peer(), TaskSet(), list[bool](), list[bool]()
    peer.gate.clear()
    transport = AsgiTransport(
        peer,
        tasks=tasks,
        on_lost=lambda: lost.append(True),
        limit=10,
        close_timeout=0.05,
        on_unabortable=lambda: unabortable.append(True),
    )
    await transport.open()
    transport.close(1000)
    await tasks.wait(within=5)
    assert len(tasks) == 0 and peer.events == [] and unabortable == [True]


async def test_close_written_in_time_is_not_reported_unabortable() -> None:
    """A close the peer takes within close_timeout is not counted, socket or no socket."""
    peer, tasks, unabortable = Peer(), TaskSet(), list[bool]()
    transport = AsgiTransport(
        peer,
        tasks=tasks,
        on_lost=lambda: None,
        limit=10,
        close_timeout=1,
        on_unabortable=lambda: unabortable.append(True),
    )
    transport.close(1000)
    await tasks.wait(within=5)
    assert texts(peer) == [1000] and unabortable == []


async def test_detach_stops_sending_without_closing() -> None:
    """detach drops the backlog and refuses further frames, writing nothing."""
    peer, tasks, lost = Peer(), TaskSet(), list[bool]()
    peer.gate.clear()
    transport = make(peer, tasks, lost)
    transport.send(encode("held"))
    transport.detach()
    peer.gate.set()
    await tasks.wait(within=1)
    assert peer.events == [] and transport.send(encode("x")) is Delivery.CLOSED


async def test_task_set_cancels_what_is_left() -> None:
    """cancel_all cancels running tasks and waits for them."""
    tasks = TaskSet()
    never = asyncio.Event()
    task = tasks.spawn(never.wait())
    await tasks.wait(within=0.01)
    assert len(tasks) == 1
    await tasks.cancel_all()
    assert task.cancelled() and len(tasks) == 0


async def test_task_set_cancels_again_a_task_that_swallowed_its_cancellation() -> None:
    """A task that turns its first cancellation into something else (as some I/O libraries
    do) is cancelled again instead of being waited for forever."""
    tasks = TaskSet()
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    tasks.spawn(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await tasks.cancel_all()
    assert swallowed == 1 and len(tasks) == 0
