"""Where lifecycle events wait until a backend acknowledged them.

An outbox is written by the instance that saw (or, for a dead instance, purged) what happened
and read by a ``Dispatcher``.  Entries are *claimed* in batches; a claimed batch that is not
acknowledged (the dispatcher died, or gave up for now) is handed out again later, to this or
another reader: that is the at-least-once half of the guarantee.  The other half is that an
event is in the outbox before anything else can forget it (the Redis outbox writes it in the
same script that changes the cluster-wide counts).

Every outbox is bounded: when full, the oldest entries are dropped and counted
(``dropped``), never the newest and never silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from roomcast.events.schema import LifecycleEvent

__all__ = ["Outbox"]


class Outbox(Protocol):
    """The contract between the event producers and the dispatcher."""

    async def claim(self, count: int, wait: float) -> list[tuple[str, LifecycleEvent]]:
        """Up to ``count`` entries, oldest first, as (entry id, event); waits up to ``wait``
        seconds for the first one.  Entries claimed and not acknowledged within the
        outbox's reclaim delay are claimed again."""
        ...

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """These entries were delivered: never hand them out again."""
        ...

    @property
    def backlog(self) -> int:
        """Entries not yet acknowledged (as last known: no I/O)."""
        ...

    @property
    def dropped(self) -> int:
        """Entries dropped because the outbox was full, since start."""
        ...
