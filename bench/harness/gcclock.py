"""Counts a server's cyclic-GC passes and the time spent in them, per generation.

Standard library only: it runs inside the servers under test (``apps.py``, ``peers/``), which
report it on their stats endpoints.
"""

from __future__ import annotations

import gc
import time
from typing import Any

__all__ = ["GcClock"]


class GcClock:
    """Registers a ``gc.callbacks`` entry on creation; ``snapshot`` reads the counters."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.collections[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started

    def snapshot(self) -> dict[str, Any]:
        """``{"gc_collections": [passes per generation], "gc_seconds": [...]}``."""
        return {"gc_collections": list(self.collections), "gc_seconds": list(self.seconds)}
