"""The application's readers of lifecycle events: the iterator and the callbacks' loop.

Both read an ``Outbox`` (memory or a Redis Stream's consumer group) and differ only in who
handles an event: the application's ``async for`` loop, or its callbacks called one event at
a time.  Both deliver at least once and survive an outbox in trouble (Redis away): a failed
claim or acknowledgement is counted, logged within a budget and retried after a backoff,
never raised into the application's loop.

Callbacks: a callback that raises (or outlives ``callback_timeout``) is called again after
0.25, 0.5, 1 s... up to ``callback_retries`` more times; then the event is logged and skipped
for that callback (a poison event must not stop every later one).  Callbacks that took it
are not called again.  The event is acknowledged once every callback took or skipped it, so
one a stopped process had not finished is handed out again.  One slow callback holds back
the events behind it: that is the price of their order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

from roomcast.events.feed import Sample
from roomcast.events.memory import MemoryOutbox
from roomcast.events.outbox import Outbox
from roomcast.events.schema import LifecycleEvent
from roomcast.logbudget import EventLog

__all__ = ["EventCallback", "EventReaders", "EventStats"]

logger = logging.getLogger("roomcast.events")

EventCallback = Callable[[LifecycleEvent], Awaitable[object]]
"""An ``on_event`` callback: ``async def handle(event: LifecycleEvent) -> None``."""

CLAIM_WAIT = 1.0
"""Seconds a reader's claim waits for an event; also how soon it sees a stop."""
_BATCH = 20
"""Events per claim: the callbacks acknowledge each as handled, but hold the rest of the
batch meanwhile (handed out again after ``reclaim_after``: keep it above a batch's time)."""


@dataclasses.dataclass(slots=True)
class EventStats:
    """What the readers counted (plain integers, read by ``samples``)."""

    handled: int = 0
    """Events every callback took."""
    callback_failures: int = 0
    """Callback calls that raised or timed out."""
    retries: int = 0
    """Further attempts after such failures."""
    skipped: int = 0
    """(event, callback) pairs given up on after the last retry."""
    outbox_errors: int = 0
    """Claims and acknowledgements that failed (Redis away): retried, never raised."""


class EventReaders:
    """The callbacks of a manager and the loops that hand events out.

    Args:
        retries: Further attempts of a callback that raised.
        timeout: Seconds one callback call may take.
    """

    def __init__(self, retries: int, timeout: float) -> None:
        self.callbacks: list[EventCallback] = []
        self.stats = EventStats()
        self._retries = retries
        self._timeout = timeout
        self._log = EventLog(logger)

    def samples(self) -> list[Sample]:
        stats = self.stats
        return [
            ("counter", "roomcast_events_handled", "Events every callback took.", stats.handled),
            (
                "counter",
                "roomcast_events_callback_failures",
                "Event callback calls that raised or timed out.",
                stats.callback_failures,
            ),
            ("counter", "roomcast_events_callback_retries", "Callback retries.", stats.retries),
            (
                "counter",
                "roomcast_events_skipped",
                "Events a callback was given up on for, after its last retry.",
                stats.skipped,
            ),
            (
                "counter",
                "roomcast_events_reader_errors",
                "Claims and acknowledgements of the event readers that failed.",
                stats.outbox_errors,
            ),
        ]

    async def iterate(
        self, outbox: Outbox, draining: Callable[[], bool]
    ) -> AsyncGenerator[LifecycleEvent, None]:
        """``outbox``'s events, each acknowledged when the loop asks for the next (or when
        the generator is closed after the loop finished with it); once ``draining()``, what
        is there without waiting, and then the end."""
        done: list[str] = []  # handed out, and the loop asked for more: acknowledged
        batch: list[tuple[str, LifecycleEvent]] = []
        failures = 0
        try:
            while True:
                if done:
                    await self._ack(outbox, done)
                    done = []
                stopping = draining()
                batch, failures = await self._claim(
                    outbox, 0.0 if stopping else CLAIM_WAIT, failures
                )
                if not batch and stopping:
                    return
                for entry_id, event in batch:
                    yield event
                    done.append(entry_id)
                batch = []
        finally:
            # The loop broke on batch[len(done)]: that one and the rest go back.
            unread = [entry_id for entry_id, _ in batch[len(done) :]]
            await asyncio.shield(self._settle(outbox, done, unread))

    async def run_callbacks(self, outbox: Outbox, draining: Callable[[], bool]) -> None:
        """Hand ``outbox``'s events to the callbacks until cancelled, or, once
        ``draining()``, until the outbox has nothing more at once."""
        failures = 0
        while True:
            stopping = draining()
            batch, failures = await self._claim(outbox, 0.0 if stopping else CLAIM_WAIT, failures)
            if not batch and stopping:
                return
            for index, (entry_id, event) in enumerate(batch):
                try:
                    await self._handle(event)
                except asyncio.CancelledError:
                    unread = [e for e, _ in batch[index:]]
                    await asyncio.shield(self._settle(outbox, [], unread))
                    raise
                await self._ack(outbox, [entry_id])

    async def _handle(self, event: LifecycleEvent) -> None:
        pending = list(self.callbacks)
        for attempt in range(self._retries + 1):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(min(5.0, 0.25 * 2 ** (attempt - 1)))
            pending = [callback for callback in pending if not await self._call(callback, event)]
            if not pending:
                self.stats.handled += 1
                return
        self.stats.skipped += len(pending)
        self._log.event(
            "event skipped",
            "%s event %s given up on by %d callback(s) after %d attempt(s)",
            event.kind.value,
            event.id,
            len(pending),
            self._retries + 1,
        )

    async def _call(self, callback: EventCallback, event: LifecycleEvent) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await callback(event)
        except Exception as exc:  # the application's failure: retried, logged, never fatal
            self.stats.callback_failures += 1
            name = getattr(callback, "__qualname__", repr(callback))
            self._log.event(
                "event callback failed", "%s on %s %s: %r", name, event.kind.value, event.id, exc
            )
            return False
        return True

    async def _claim(
        self, outbox: Outbox, wait: float, failures: int
    ) -> tuple[list[tuple[str, LifecycleEvent]], int]:
        """A batch, and the reader's failures in a row (after a failure: an empty batch,
        once a backoff passed)."""
        try:
            return await outbox.claim(_BATCH, wait), 0
        except Exception as exc:  # Redis away: the reader waits and tries again
            self.stats.outbox_errors += 1
            self._log.event("event claim failed", "%r", exc)
            await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))
            return [], failures + 1

    async def _ack(self, outbox: Outbox, entry_ids: list[str]) -> None:
        try:
            await outbox.ack(entry_ids)
        except Exception as exc:  # handed out again after reclaim_after: at least once
            self.stats.outbox_errors += 1
            self._log.event("event acknowledgement failed", "%r", exc)

    async def _settle(self, outbox: Outbox, done: list[str], unread: list[str]) -> None:
        """A reader stops: acknowledge what it handled; what it did not goes back at once
        where the outbox can (memory), else after ``reclaim_after``."""
        if done:
            await self._ack(outbox, done)
        if unread and isinstance(outbox, MemoryOutbox):
            await outbox.release(unread)
