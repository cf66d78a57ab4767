"""Ownership of background tasks: every task roomcast starts is held here and cancelled here.

asyncio keeps only weak references to tasks, so a task nobody holds can vanish mid-flight, and
a task nobody cancels outlives its owner.  Each manager owns one ``TaskSet``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["TaskSet"]

logger = logging.getLogger("roomcast")

T = TypeVar("T")

_RECANCEL = 0.5
"""Seconds between cancellations of a task that has not ended yet (see ``cancel_all``)."""


class TaskSet:
    """A set of running tasks that logs their failures and cancels them on demand."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Start ``coro`` as a task owned by this set."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=exc)

    async def wait(self, within: float) -> None:
        """Wait up to ``within`` seconds for the tasks running now to finish by themselves."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=within)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until all have finished.

        A task may swallow its cancellation (some libraries turn a CancelledError raised in
        their I/O into an ordinary error, which a retry loop then handles): such a task is
        cancelled again every ``_RECANCEL`` seconds until it ends, instead of being waited
        for forever.
        """
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=_RECANCEL)
