"""What a ``RedisLifecycle`` counts, and the same as metric samples.

Plain integers bumped where things happen; ``samples`` turns them into the
``(kind, name, documentation, value)`` tuples of ``roomcast.serve.metrics.Sample`` only when
scraped, so a face wires them with one argument.
"""

from __future__ import annotations

import dataclasses

__all__ = ["LifecycleStats", "Sample"]

Sample = tuple[str, str, str, float]
"""``(kind, name, documentation, value)``, as ``roomcast.serve.metrics.Sample``."""


@dataclasses.dataclass(slots=True)
class LifecycleStats:
    """What a ``RedisLifecycle`` did since it started."""

    recorded: int = 0
    """Changes recorded."""
    dropped: int = 0
    """Changes not queued because the queue was full (counts repaired by a restore)."""
    written: int = 0
    """Changes written to Redis."""
    script_calls: int = 0
    events: int = 0
    """Events this instance's scripts wrote to the stream."""
    purges: int = 0
    """Dead instances this instance purged."""
    synthetic: int = 0
    """Departures this instance made for dead instances' subjects."""
    restores: int = 0
    """Times this instance rewrote its part in Redis."""
    errors: int = 0
    """Script calls that failed (Redis away, a timeout)."""

    def samples(self, queued: int) -> list[Sample]:
        """The counters, and ``queued`` (changes waiting) as a gauge."""
        out: list[Sample] = [("gauge", "roomcast_lifecycle_queued", "Changes waiting", queued)]
        for name, doc in _COUNTERS:
            out.append(("counter", f"roomcast_lifecycle_{name}", doc, getattr(self, name)))
        return out


_COUNTERS = (
    ("recorded", "Lifecycle changes recorded"),
    ("dropped", "Lifecycle changes dropped (queue full)"),
    ("written", "Lifecycle changes written to Redis"),
    ("script_calls", "Lifecycle script calls"),
    ("events", "Lifecycle events written by this instance"),
    ("purges", "Dead instances purged by this instance"),
    ("synthetic", "Departures made for dead instances"),
    ("restores", "Rewrites of this instance's lifecycle state"),
    ("errors", "Lifecycle script calls that failed"),
)
