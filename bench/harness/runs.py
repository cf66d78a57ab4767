"""A run's frame: where results go, process setup, the whole-run deadline, and a frozen copy
of ``src/`` to run servers on."""

from __future__ import annotations

import contextlib
import io
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from harness.limits import raise_nofile
from harness.meta import cpu_probe, git_state

__all__ = [
    "BENCH_DIR",
    "REPO_DIR",
    "RESULTS_DIR",
    "DeadlineExpired",
    "close_meta",
    "deadline",
    "prepare",
    "snapshot",
]

BENCH_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
"""Raw figures, Markdown reports and server logs (git-ignored)."""


def prepare() -> int:
    """Set up the driver: open-file limit to the hard limit (the servers and workers inherit
    it), the results directory, a clean exit on SIGTERM (so every child is killed).  Returns
    the open-file limit."""
    nofile = raise_nofile()
    RESULTS_DIR.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return nofile


def close_meta(meta: dict[str, Any], started: float, problems: list[str]) -> None:
    """Complete ``meta`` at the end of a run: duration, git state again, the host probe
    again; a checkout that changed during the run (and ran the servers) is a problem."""
    meta["duration_s"] = time.monotonic() - started
    meta["git_at_end"] = git_state()
    meta["cpu_probe_ms_after"] = cpu_probe()
    if meta["git_at_end"] != meta["git"] and not meta.get("snapshot"):
        problems.append(
            f"the checkout changed during the run: {meta['git']} at start, "
            f"{meta['git_at_end']} at the end (roomcast is installed editable)"
        )
    meta["problems"] = problems


class DeadlineExpired(Exception):
    """``--deadline`` passed: the run stops, with the usual cleanup."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Abort the run (with the usual cleanup) after ``seconds``."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise DeadlineExpired(f"run deadline of {seconds:g} s expired")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def snapshot(commit: str | None) -> Iterator[dict[str, str] | None]:
    """``git archive COMMIT src`` into a temporary directory, for the servers' PYTHONPATH.

    Yields ``{"commit": short hash, "src": directory}`` (None without a commit).  A tree from
    before ``roomcast.testing`` existed gets the checkout's copy (standard library only; the
    drivers' throwaway redis-server comes from it, the servers never import it)."""
    if not commit:
        yield None
        return
    resolved = subprocess.run(
        ["git", "rev-parse", "--short", f"{commit}^{{commit}}"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="scaleout-src-") as tmp:
        archive = subprocess.run(
            ["git", "archive", resolved, "src"],
            cwd=REPO_DIR,
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        testing = Path(tmp) / "src" / "roomcast" / "testing.py"
        if not testing.exists():
            shutil.copyfile(REPO_DIR / "src" / "roomcast" / "testing.py", testing)
        yield {"commit": resolved, "src": str(Path(tmp) / "src")}
