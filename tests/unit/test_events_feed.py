"""The feed from a hub to lifecycle events, in memory: what a hub's changes emit, the debounce
timer, and reading an outbox as an async iterator."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from roomcast.connection import Connection
from roomcast.events.feed import LifecycleFeed, MemoryLifecycle, iterate
from roomcast.events.memory import MemoryOutbox
from roomcast.events.schema import LifecycleEvent
from roomcast.hub import Hub


async def drain(outbox: MemoryOutbox) -> list[LifecycleEvent]:
    entries = await outbox.claim(1000, wait=0)
    await outbox.ack([entry_id for entry_id, _ in entries])
    return [event for _, event in entries]


async def test_a_hubs_changes_become_events() -> None:
    """Register, join, a $ room, publish, close: the events, without the server's rooms."""
    outbox = MemoryOutbox()
    store = MemoryLifecycle(outbox, debounce=0)
    feed = LifecycleFeed(store)
    hub = Hub()
    hub.observe(feed)
    await store.start()
    try:
        alice = Connection(None, user_id="alice")
        hub.attach(alice)
        feed.connected(alice, {"plan": "pro"})
        hub.join(alice, "chat")
        hub.join(alice, "$presence:chat")
        feed.published(alice, "chat", {"text": "hi"})
        feed.published(alice, "$stats", {})
        feed.closing(alice, 1001, "going away")
        hub.forget(alice)
        events = await drain(outbox)
    finally:
        await store.stop()
    assert [(e.kind.value, e.user, e.room) for e in events] == [
        ("connect", "alice", None),
        ("occupied", None, "chat"),
        ("join", "alice", "chat"),
        ("publish", "alice", "chat"),
        ("leave", "alice", "chat"),
        ("vacated", None, "chat"),
        ("disconnect", "alice", None),
    ]
    assert events[0].data == {"plan": "pro"} and events[3].data == {"text": "hi"}
    assert (events[-1].code, events[-1].reason) == (1001, "going away")


async def test_a_connection_that_just_went_away_is_lost_1006() -> None:
    """Without a word on how it closed, a departure is 1006."""
    outbox = MemoryOutbox()
    store = MemoryLifecycle(outbox, debounce=0)
    feed, hub = LifecycleFeed(store), Hub()
    hub.observe(feed)
    bob = Connection(None, user_id="bob")
    hub.attach(bob)
    feed.connected(bob)
    hub.forget(bob)
    events = await drain(outbox)
    assert (events[-1].kind.value, events[-1].code) == ("disconnect", 1006)


async def test_departures_wait_for_their_window_then_come_out() -> None:
    """The timer emits a departure once the window ended, without any further change."""
    outbox = MemoryOutbox()
    store = MemoryLifecycle(outbox, debounce=0.05)
    feed, hub = LifecycleFeed(store), Hub()
    hub.observe(feed)
    await store.start()
    try:
        carol = Connection(None, user_id="carol")
        hub.attach(carol)
        feed.connected(carol)
        hub.forget(carol)
        assert [e.kind.value for e in await drain(outbox)] == ["connect"]
        async with asyncio.timeout(5):  # (the claim waits for the timer's event)
            (entry,) = await outbox.claim(10, wait=4)
        assert entry[1].kind.value == "disconnect" and store.state.waiting == 0
    finally:
        await store.stop()


async def test_stopping_emits_what_still_waits() -> None:
    """A process that stops does not keep its departures to itself."""
    outbox = MemoryOutbox()
    store = MemoryLifecycle(outbox, debounce=60)
    feed, hub = LifecycleFeed(store), Hub()
    hub.observe(feed)
    await store.start()
    dave = Connection(None, user_id="dave")
    hub.attach(dave)
    feed.connected(dave)
    hub.forget(dave)
    await store.stop()
    assert [e.kind.value for e in await drain(outbox)] == ["connect", "disconnect"]
    assert ("gauge", "roomcast_lifecycle_waiting") in [s[:2] for s in store.samples()]


async def test_iterate_acknowledges_an_event_when_the_next_is_asked_for() -> None:
    """A consumer that stops after an event gets it again; the ones before it are done."""
    outbox = MemoryOutbox(reclaim_after=0.05)
    store = MemoryLifecycle(outbox, debounce=0)
    feed = LifecycleFeed(store)
    for n in range(3):
        feed.connected(Connection(None, user_id=f"u{n}"))
    async with asyncio.timeout(5):
        seen = []
        async with contextlib.aclosing(iterate(outbox, wait=0.01)) as events:
            async for event in events:
                seen.append(event.user)
                if len(seen) == 2:
                    break
        assert seen == ["u0", "u1"] and outbox.backlog == 2
        await asyncio.sleep(0.1)  # u1's claim lapses
        again = []
        async with contextlib.aclosing(iterate(outbox, wait=0.01)) as events:
            async for event in events:
                again.append(event.user)
                if len(again) == 2:
                    break
    assert again == ["u1", "u2"]


def test_close_codes_said_of_connections_that_never_depart_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A close said of a connection the hub never forgets does not pile up."""
    from roomcast.events import feed as feed_module

    monkeypatch.setattr(feed_module, "MAX_CLOSING", 3)
    feed = LifecycleFeed(MemoryLifecycle(MemoryOutbox(), debounce=0))
    for _ in range(10):
        feed.closing(Connection(None, user_id="x"), 1000)
    assert len(feed._closing) == 3
