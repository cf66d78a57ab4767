"""``roomcast serve`` started from Python, for the variants ``serve.py`` measures.

    python -m peers.roomcast_launch MODE STATS_FILE serve --port ...     (from bench/)

MODE ``shipped``: nothing changed; ``nofreeze``: ``gc.freeze`` replaced by a no-op, so the
``gc.collect(); gc.freeze()`` that ``roomcast.cli`` runs after start leaves every object to the
collector; ``threshold``: as shipped, plus ``gc.set_threshold(50_000, 20, 100)``.  In every mode
a ``GcClock`` counts the collector's passes and time per generation, and ``SIGUSR1`` writes them
as JSON to STATS_FILE.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from harness.gcclock import GcClock

MODES = ("shipped", "nofreeze", "threshold")


def main() -> int:
    mode, stats_file, *roomcast_args = sys.argv[1:]
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {MODES}")
    if mode == "nofreeze":
        gc.freeze = lambda: None
    elif mode == "threshold":
        gc.set_threshold(50_000, 20, 100)
    clock = GcClock()

    def dump(*_: Any) -> None:
        stats = {
            **clock.snapshot(),
            "gc_threshold": gc.get_threshold(),
            "gc_frozen": gc.get_freeze_count(),
            "written": time.time(),
        }
        Path(stats_file).write_text(json.dumps(stats))

    signal.signal(signal.SIGUSR1, dump)
    from roomcast.cli import main as roomcast_main

    return roomcast_main(roomcast_args)


if __name__ == "__main__":
    raise SystemExit(main())
