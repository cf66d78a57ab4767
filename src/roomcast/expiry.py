"""Credential expiry: when each connection's token runs out, and what to do then.

Pure: the caller passes the clock (``time.time()`` seconds, since tokens carry Unix times).
``ExpiryClock`` holds one deadline per connection in a heap; setting a new deadline (a token
refresh) simply supersedes the old entry, which is skipped when it surfaces.  Each connection
goes through two steps: at its token's expiry it is *warned* (the server tells the client to
send a new token), and ``grace`` seconds later, if no new token came, it is *expired* (closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import math
import time
from collections.abc import Callable

from roomcast.errors import CloseCode
from roomcast.messages import ErrorMessage

__all__ = ["ExpiryClock", "Step", "expiry_warning", "run_expiry"]


class Step(enum.Enum):
    WARN = "warn"
    """The token just expired: tell the client it has ``grace`` seconds to send a new one."""
    EXPIRE = "expire"
    """The grace period is over: close the connection."""


class ExpiryClock:
    """Deadlines of many connections, one heap.

    Args:
        grace: Seconds between the warning and the close.
    """

    def __init__(self, grace: float) -> None:
        if grace < 0:
            raise ValueError("grace must not be negative")
        self.grace = grace
        self._heap: list[tuple[float, int, str, Step]] = []
        self._current: dict[str, int] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._current)

    def set(self, connection_id: str, expires_at: float | None) -> None:
        """(Re)arm a connection for a token expiring at ``expires_at``; None disarms it.

        Raises:
            ValueError: ``expires_at`` is NaN or infinite (``Identity`` never holds one).
        """
        if expires_at is None:
            self._current.pop(connection_id, None)
            return
        # A NaN at the head of the heap is never due and never passed: it would stall every
        # other deadline (and spin run_expiry).  Refuse it before it gets in.
        if not math.isfinite(expires_at):
            raise ValueError(f"an expiry must be a finite time, not {expires_at!r}")
        self._serial += 1
        self._current[connection_id] = self._serial
        heapq.heappush(self._heap, (expires_at, self._serial, connection_id, Step.WARN))

    def forget(self, connection_id: str) -> None:
        self._current.pop(connection_id, None)

    def next_due(self) -> float | None:
        """When ``due`` next has work (skipping superseded entries), or None."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[tuple[str, Step]]:
        """Steps that are due at ``now``; a warned connection is re-armed for its close."""
        steps: list[tuple[str, Step]] = []
        while self._heap and self._heap[0][0] <= now:
            when, serial, connection_id, step = heapq.heappop(self._heap)
            if self._current.get(connection_id) != serial:
                continue  # superseded by a refresh, or forgotten
            steps.append((connection_id, step))
            if step is Step.WARN:
                heapq.heappush(self._heap, (when + self.grace, serial, connection_id, Step.EXPIRE))
            else:
                del self._current[connection_id]
        return steps

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._current.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)


async def run_expiry(
    clock: ExpiryClock, changed: asyncio.Event, on_step: Callable[[str, Step], None]
) -> None:
    """Drive ``clock`` forever: sleep until its next deadline (or until ``changed`` is set,
    when a new deadline may come sooner) and hand every due step to ``on_step``."""
    while True:
        due = clock.next_due()
        changed.clear()
        if due is None:
            await changed.wait()
            continue
        delay = due - time.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await changed.wait()
            continue
        for connection_id, step in clock.due(time.time()):
            on_step(connection_id, step)


def expiry_warning(grace: float) -> ErrorMessage:
    """What a client is told when its token expires."""
    how = '{"type": "auth", "token": ...}'
    return ErrorMessage(
        error=f"token expired; send a new one within {grace:g} s ({how})",
        code=CloseCode.TOKEN_EXPIRED,
    )
