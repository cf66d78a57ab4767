"""An outbox in this process's memory: for one instance without Redis, and for tests.

What it keeps is lost when the process ends: on a crash, a kill or a restart, every event not
yet acknowledged by the backend (queued, or claimed and in flight) is gone, and the backend
never hears of it.  A clean stop loses the same entries unless the dispatcher delivered them
first.  Use it where a lost ``disconnect`` after a crash is acceptable (the backend sees the
user's next ``connect`` anyway), not where every event must survive the process.

The bound is a number of events: when full, ``append`` drops the oldest entry (claimed or not)
and counts it in ``dropped``, so a backend that is down for long costs memory up to the bound
and never more; what it misses is counted, never silent.

Pure asyncio: ``append`` is synchronous and never waits (producers are the hub's synchronous
paths), and ``claim`` waits on an ``asyncio.Event`` set by ``append`` and ``release``, with a
deadline at the next reclaim, never by polling.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Sequence

from roomcast.events.schema import LifecycleEvent

__all__ = ["MemoryOutbox"]


class MemoryOutbox:
    """A bounded, in-memory ``Outbox``.

    Entries are handed out oldest first.  A claimed entry is out of reach of other claims until
    it is acknowledged, released, or ``reclaim_after`` seconds pass (its claimer died or is
    stuck): then it is claimed again, in its original place in the order.

    Args:
        max_events: The bound: entries kept at most (queued and claimed together).
        reclaim_after: Seconds after which an unacknowledged claim lapses.
        clock: Monotonic seconds.  A test may pass a fake one if its claims do not wait
            (``wait=0``): a claim's waits are timed by the event loop, in real seconds.
    """

    def __init__(
        self,
        max_events: int = 10_000,
        *,
        reclaim_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        if reclaim_after <= 0:
            raise ValueError("reclaim_after must be positive")
        self._max_events = max_events
        self._reclaim_after = reclaim_after
        self._clock = clock
        # Insertion order is the delivery order; dicts keep it, and removal is O(1).
        self._entries: dict[str, LifecycleEvent] = {}
        # Entry id -> when its claim lapses; its ids are always a subset of _entries's.
        self._claimed: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def max_events(self) -> int:
        """The bound."""
        return self._max_events

    @property
    def backlog(self) -> int:
        """Entries not yet acknowledged (queued and claimed)."""
        return len(self._entries)

    @property
    def dropped(self) -> int:
        """Entries dropped because the outbox was full, since it was made."""
        return self._dropped

    @property
    def in_flight(self) -> int:
        """Entries claimed and neither acknowledged nor released (lapsed claims included until
        they are claimed again)."""
        return len(self._claimed)

    def append(self, events: Iterable[LifecycleEvent]) -> list[str]:
        """Queue ``events`` (in order) and return their entry ids; drops the oldest entries
        beyond the bound.  Never waits."""
        ids: list[str] = []
        for event in events:
            entry_id = str(next(self._ids))
            self._entries[entry_id] = event
            ids.append(entry_id)
        excess = len(self._entries) - self._max_events
        if excess > 0:
            for entry_id in list(itertools.islice(self._entries, excess)):
                del self._entries[entry_id]
                self._claimed.pop(entry_id, None)
            self._dropped += excess
        if ids:
            self._wakeup.set()
            self._empty.clear()
        return ids

    async def claim(self, count: int, wait: float) -> list[tuple[str, LifecycleEvent]]:
        """Up to ``count`` entries, oldest first; waits up to ``wait`` seconds for the first.

        Raises:
            ValueError: ``count`` is less than 1.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        deadline = self._clock() + max(wait, 0.0)
        while True:
            now = self._clock()
            batch = self._take(count, now)
            if batch or now >= deadline:
                return batch
            # Nothing to take: sleep until something is appended or released, a claim lapses,
            # or the wait is over.  Cleared after the check with no await between: no wakeup
            # can be missed.  A wakeup meant for another claimer only costs a second look.
            # The deadline sets the same event by a timer, so the wait ends without cancelling
            # anything: a cancellation of claim() is always the caller's (a stop).
            self._wakeup.clear()
            until = min([deadline, *self._claimed.values()])
            timer = asyncio.get_running_loop().call_later(until - now, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()

    def _take(self, count: int, now: float) -> list[tuple[str, LifecycleEvent]]:
        """Claim up to ``count`` free entries (never claimed, or their claim lapsed)."""
        lapse = now + self._reclaim_after
        batch: list[tuple[str, LifecycleEvent]] = []
        for entry_id, event in self._entries.items():
            claimed_until = self._claimed.get(entry_id)
            if claimed_until is None or claimed_until <= now:
                self._claimed[entry_id] = lapse
                batch.append((entry_id, event))
                if len(batch) == count:
                    break
        return batch

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """These entries were delivered: forget them (unknown ids, dropped ones included, are
        ignored)."""
        for entry_id in entry_ids:
            self._entries.pop(entry_id, None)
            self._claimed.pop(entry_id, None)
        if not self._entries:
            self._empty.set()

    async def drained(self, within: float) -> bool:
        """Wait up to ``within`` seconds until every entry was acknowledged (a process about
        to end gives its dispatcher that long: what is left is lost); True if they were."""
        try:
            async with asyncio.timeout(within):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    async def release(self, entry_ids: Sequence[str]) -> None:
        """These claimed entries were not delivered and their claimer stops: hand them out
        again at once, in their place, instead of after the reclaim delay."""
        released = False
        for entry_id in entry_ids:
            released |= self._claimed.pop(entry_id, None) is not None
        if released:
            self._wakeup.set()
