"""What every results file records about its run: when, how, on what, at which commit."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.stats import median

__all__ = [
    "FASTAPI_PACKAGES",
    "cpu_probe",
    "git_state",
    "package_versions",
    "redis_version",
    "run_meta",
]

REPO_DIR = Path(__file__).resolve().parents[2]
FASTAPI_PACKAGES = ("roomcast", "fastapi", "starlette", "uvicorn", "uvloop", "websockets", "picows")
"""The FastAPI path's packages (``fanout.py``); ``targets.PACKAGES`` are the peers'."""


def git_state() -> dict[str, str]:
    """Commit of the checkout, and whether the library differs from it (results depend on it)."""

    def git(*command: str) -> str:
        try:
            done = subprocess.run(
                ["git", *command], cwd=REPO_DIR, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "src_changes": git("status", "--porcelain", "--", "src") or "none",
    }


def package_versions(names: Sequence[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


def redis_version() -> str:
    """``redis-server --version``'s line (the one on PATH, which ``roomcast.testing`` runs)."""
    server = shutil.which("redis-server")
    if server is None:
        return "redis-server not found"
    return subprocess.run(
        [server, "--version"], capture_output=True, text=True, timeout=10
    ).stdout.strip()


def cpu_probe(repeats: int = 30) -> dict[str, float]:
    """CPU ms that one fixed pure-Python loop takes, ``repeats`` times back to back.

    On a shared VM the same work can take 1.5x longer from one second to the next; the spread
    printed with the results says how steady the host was during this run.
    """
    times = []
    for _ in range(repeats):
        started = time.process_time()
        table: dict[int, str] = {}
        for i in range(300_000):
            table[i % 1000] = str(i)
        times.append((time.process_time() - started) * 1000)
    return {"min": min(times), "median": median(times), "max": max(times)}


def run_meta(script: str, nofile: int, packages: Sequence[str]) -> dict[str, Any]:
    """The run's date, command, host, open-file limit, git state and ``packages``' versions."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", script, *sys.argv[1:]]),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "nofile": nofile,
        "git": git_state(),
        "versions": package_versions(packages),
    }
