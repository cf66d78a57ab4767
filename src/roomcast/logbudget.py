"""Log lines with a budget: a flood of the same event must not become a flood of lines.

``EventLog`` is for events that name a client (a refused upgrade, a slow consumer closed):
the first lines of each kind, then one in ``every`` with the running count.  ``FailureTally``
is for failures that come in bursts with one cause (publishes refused while Redis is away):
the first is logged at once, the rest are counted and summed up at most once per interval,
and what is left is summed up when the cause goes away, so the count in the log is the
count that happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["EventLog", "FailureTally"]


class EventLog:
    """One log line per notable event, with a budget: the first ``burst`` lines of each kind,
    then one in ``every`` (with the count).  Lines carry ids and reasons, never tokens or
    message bodies; ids are escaped and cut by the caller (``preview``).
    """

    def __init__(self, logger: logging.Logger, burst: int = 20, every: int = 1000) -> None:
        self._logger = logger
        self._burst = burst
        self._every = every
        self._counts: dict[str, int] = {}

    def event(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        """Log one event of ``kind`` (within the budget); a client's mistakes go at INFO, the
        server's own troubles at WARNING."""
        count = self._counts.get(kind, 0) + 1
        self._counts[kind] = count
        if count <= self._burst or count % self._every == 0:
            self._logger.log(level, "%s (%s #%d): " + message, kind, kind, count, *args)


class FailureTally:
    """Counts failures of one kind and logs them as sums.

    Args:
        logger: Where the lines go (WARNING).
        what: What failed, as in "message(s) could not be published".
        interval: Least seconds between two lines while failures go on.
        clock: Monotonic seconds (a test passes its own).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._unlogged = 0
        self._why = ""
        self._logged_at: float | None = None

    def add(self, why: str, count: int = 1) -> None:
        """``count`` more failures, for the reason ``why``."""
        self._unlogged += count
        self._why = why
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= self._interval:
            self._log(now)

    def flush(self) -> None:
        """Log what was counted since the last line (the cause went away)."""
        if self._unlogged:
            self._log(self._clock())
        self._logged_at = None

    def _log(self, now: float) -> None:
        self._logger.warning("%d %s: %s", self._unlogged, self._what, self._why)
        self._unlogged = 0
        self._logged_at = now
