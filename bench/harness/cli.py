"""The command line several scenarios share: the client-worker flags, the run's frame
(``--deadline``, ``--snapshot``, ``--no-sysctl``) and what it sets up, servers chosen by name.

Each scenario keeps its own flags and defaults; these add the common ones with the same names
and help everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from harness.limits import wide_port_range
from harness.report import log
from harness.runs import DeadlineExpired, deadline, snapshot

__all__ = ["add_frame_flags", "add_worker_flags", "choose", "framed"]

T = TypeVar("T")


def add_worker_flags(parser: argparse._ActionsContainer, *, min_workers: int | None = None) -> None:
    """``--per-worker``, ``--min-workers`` (when given its default) and ``--concurrency``: how
    the client connections are shared among worker processes."""
    parser.add_argument("--per-worker", type=int, default=7500, help="connections per process")
    if min_workers is not None:
        parser.add_argument("--min-workers", type=int, default=min_workers)
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")


def add_frame_flags(
    parser: argparse.ArgumentParser, *, deadline_s: float, deadline_help: str, snapshot_help: str
) -> None:
    """``--deadline``, ``--snapshot`` and ``--no-sysctl``: what ``framed`` sets up.
    ``args.roomcast_src`` (the snapshot's ``src/`` once it is in place) starts as None."""
    parser.add_argument("--deadline", type=float, default=deadline_s, help=deadline_help)
    parser.add_argument("--snapshot", metavar="COMMIT", help=snapshot_help)
    parser.add_argument("--no-sysctl", action="store_true", help="leave the port range alone")
    parser.set_defaults(roomcast_src=None)


@contextlib.contextmanager
def framed(
    args: argparse.Namespace, meta: dict[str, Any], problems: list[str]
) -> Iterator[dict[str, str] | None]:
    """The run's frame: ``--deadline``, the wide port range (unless ``--no-sysctl``) and the
    ``--snapshot`` of ``src/`` (yielded), recorded in ``meta``; an expired deadline ends the
    run (the frame cleaned up) as one of the ``problems``."""
    try:
        with (
            deadline(args.deadline),
            wide_port_range(not args.no_sysctl) as port_range,
            snapshot(args.snapshot) as snap,
        ):
            meta["port_range"] = port_range
            meta["snapshot"] = snap
            yield snap
    except DeadlineExpired as exc:
        problems.append(repr(exc))
        log(problems[-1])


def choose(text: str, known: Mapping[str, T], what: str) -> list[T]:
    """The comma-separated names in ``text``, looked up in ``known``; an unknown one ends the
    run (``what`` names the kind, e.g. "server")."""
    chosen = []
    for name in (s for s in text.split(",") if s):
        if name not in known:
            raise SystemExit(f"unknown {what} {name!r}; known: {', '.join(known)}")
        chosen.append(known[name])
    return chosen
