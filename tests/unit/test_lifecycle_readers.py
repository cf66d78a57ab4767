"""The application's readers of lifecycle events, without sockets: an outbox in trouble, a
callback that hangs, the settings' checks, and the websocket wrappers that hear closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest

from roomcast.events.memory import MemoryOutbox
from roomcast.events.schema import Kind, LifecycleEvent
from roomcast.fastapi.incoming import watch_closes
from roomcast.fastapi.lifecycle_readers import EventReaders
from roomcast.fastapi.lifecycle_settings import LifecycleSettings


def event(n: int) -> LifecycleEvent:
    return LifecycleEvent(Kind.CONNECT, f"e{n}", 1.0, n, user="ann")


class Troubled(MemoryOutbox):
    """A memory outbox whose first ``claims`` claims and ``acks`` acknowledgements fail, as a
    Redis outbox's do while Redis is away."""

    def __init__(self, claims: int, acks: int) -> None:
        super().__init__(100)
        self.claims, self.acks = claims, acks

    async def claim(self, count: int, wait: float) -> list[tuple[str, LifecycleEvent]]:
        if self.claims:
            self.claims -= 1
            raise ConnectionError("redis away")
        return await super().claim(count, wait)

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if self.acks:
            self.acks -= 1
            raise ConnectionError("redis away")
        await super().ack(entry_ids)


async def test_the_iterator_rides_out_failed_claims_and_acknowledgements() -> None:
    """Failed claims are retried after a backoff and failed acknowledgements are counted
    (the entries come back later: at least once); nothing is raised into the loop."""
    outbox = Troubled(claims=2, acks=1)
    outbox.append([event(1), event(2)])
    readers = EventReaders(retries=0, timeout=1.0)
    async with (
        asyncio.timeout(5),
        contextlib.aclosing(readers.iterate(outbox, lambda: False)) as it,
    ):
        assert (await anext(it)).id == "e1"
        assert (await anext(it)).id == "e2"
    assert readers.stats.outbox_errors == 3
    assert outbox.backlog == 2  # the acknowledgement failed: they will be handed out again


async def test_a_draining_iterator_ends_when_nothing_is_left() -> None:
    """Once draining, the iterator hands out what is there without waiting, then ends."""
    outbox = MemoryOutbox(10)
    outbox.append([event(1)])
    readers = EventReaders(retries=0, timeout=1.0)
    async with asyncio.timeout(5):
        assert [e.id async for e in readers.iterate(outbox, lambda: True)] == ["e1"]
    assert outbox.backlog == 0


async def test_a_hanging_callback_times_out_and_the_event_is_skipped() -> None:
    """A callback that outlives callback_timeout counts as a failure; after the retries the
    event is skipped and acknowledged, and the loop goes on to the next."""
    outbox = MemoryOutbox(10)
    outbox.append([event(1), event(2)])
    seen: list[str] = []

    async def slow_on_first(e: LifecycleEvent) -> None:
        if e.id == "e1":
            await asyncio.sleep(10)
        seen.append(e.id)

    readers = EventReaders(retries=0, timeout=0.05)
    readers.callbacks.append(slow_on_first)
    async with asyncio.timeout(5):
        await readers.run_callbacks(outbox, lambda: True)
    assert seen == ["e2"]
    assert (readers.stats.skipped, readers.stats.handled, outbox.backlog) == (1, 1, 0)


async def test_cancelled_callbacks_give_the_unfinished_events_back() -> None:
    """A callbacks task cancelled mid-event releases that event and the rest of its batch,
    so the next reader gets them at once."""
    outbox = MemoryOutbox(10)
    outbox.append([event(1), event(2)])
    started = asyncio.Event()

    async def stuck(e: LifecycleEvent) -> None:
        started.set()
        await asyncio.sleep(10)

    readers = EventReaders(retries=0, timeout=30)
    readers.callbacks.append(stuck)
    task = asyncio.ensure_future(readers.run_callbacks(outbox, lambda: False))
    async with asyncio.timeout(5):
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [i for i, _ in await outbox.claim(10, 0)] == ["1", "2"]


def test_settings_are_checked_and_secrets_are_bytes() -> None:
    """Impossible settings are refused at once; string secrets are UTF-8 bytes."""
    with pytest.raises(ValueError):
        LifecycleSettings(debounce=-1)
    with pytest.raises(ValueError):
        LifecycleSettings(reclaim_after=0)
    with pytest.raises(ValueError, match="webhook_secrets"):
        LifecycleSettings(webhook_url="http://backend/hooks")
    settings = LifecycleSettings(webhook_url="http://b/h", webhook_secrets=("new", b"old"))
    assert settings.secrets() == [b"new", b"old"]


class FakeSocket:
    """The two attributes of Starlette's WebSocket that the wrappers replace."""

    def __init__(self, incoming: list[dict[str, Any]]) -> None:
        self.incoming = incoming
        self.sent: list[dict[str, Any]] = []

    async def _receive(self) -> dict[str, Any]:
        return self.incoming.pop(0)

    async def _send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)


async def test_watch_closes_hears_the_client_and_the_application() -> None:
    """The client's disconnect event and the application's close event are reported with
    their code and a reason that says who closed when none was given; other events pass."""
    said: list[tuple[int, str]] = []
    socket = FakeSocket(
        [{"type": "websocket.receive", "text": "hi"}, {"type": "websocket.disconnect"}]
    )
    watch_closes(socket, lambda code, reason: said.append((code, reason)))
    assert (await socket._receive())["type"] == "websocket.receive"
    assert (await socket._receive())["type"] == "websocket.disconnect"
    await socket._send({"type": "websocket.send", "text": "x"})
    await socket._send({"type": "websocket.close", "code": 4003})
    assert said == [(1005, "client closed"), (4003, "closed by the application")]
    assert len(socket.sent) == 2
    watch_closes(object(), lambda code, reason: None)  # another framework: nothing to wrap
