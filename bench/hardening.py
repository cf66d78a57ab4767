"""Hardening drills, round two: the defects an independent drill found in ``roomcast serve`` and
on the FastAPI path, measured again against any roomcast source tree.

    .venv/bin/python bench/hardening.py [--src PATH] [--only NAME[,NAME]] [--json FILE]
    .venv/bin/python bench/hardening.py --compare BEFORE.json AFTER.json

Every server runs as ``python -m roomcast.cli serve ...`` (the compatibility path of
``roomcast.serve.cli``, which old trees have too; the FastAPI drill: uvicorn serving
``bench/apps.py``'s ``roomcast_app``) with ``PYTHONPATH=<--src>``, so one script measures the
code before and after a change.  Flags that the tree's ``serve --help`` does not list are not
passed to it (the case says which were left out).  The drills (``--only`` takes their names):

frames       a text frame with FIN=0 then 40,000 / 100,000 empty continuation frames, and
             100,000 pings, from one client; a neighbour pings (JSON) every 50 ms
api          the API port: 1,100 idle connections, 500 slowloris ones (a header byte a second),
             one POST declaring a 2 GB body and sending none
descriptors  the server under RLIMIT_NOFILE 1,024 with --max-connections 18,000 and 900: a burst
             of 1,500 upgrades at once
fastapi      ConnectionManager on uvicorn: 20 clients that never read, flooded with broadcasts;
             their server sockets close_timeout + 10 s later (``ss``)
rooms        2,000 anonymous clients join 100 rooms each (names of 64 four-byte characters, and
             of 256, the old limit in characters); server RSS before, at the peak, after
presence     2,000 members of ``big``; one client re-joins ``$presence:big`` 100 times a second
             for 11.5 s (twice): bytes received, server CPU
exp          --jwt-secret, --token-grace 1, a token whose exp is a numeric string 2 s ahead
supervisor   --workers 2 --redis-url (a throwaway redis-server): kill -9 of the supervisor
logs         25 slow-consumer closes: WARNING lines; 1,060 publishes during a Redis outage: the
             sum in the log lines against roomcast_broker_publish_failures_total

Every connection is on 127.0.0.0/8 (clients from several 127.x source addresses), servers on
ports from ``--port-base`` (65481, outside the ephemeral range) up, every wait is bounded, and
every server started here is in a session of its own, ended with its whole group when its
drill ends (SIGTERM, then SIGKILL) and again, SIGKILL, after the drill; the throwaway
redis-server (``roomcast.testing``'s) is killed when its drill ends; every one of them gets
SIGKILL if the script dies.  Server logs go to ``bench/results/hardening-*/``.  One table row
per case on stdout, progress on stderr; ``--json`` keeps the figures, and ``--compare`` prints
before/after tables from two such files.

This file is the command line; the drills are ``bench/drills/`` (one module per group, and the
runner), on the harness (``bench/harness/``: processes, the raw WebSocket client and HTTP
requests, the ``/healthz`` prober, report formatting, run metadata, limits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from drills.base import Tree
from drills.runner import DRILLS, compare, run_drills
from harness.limits import raise_nofile
from harness.report import log
from harness.runs import REPO_DIR, RESULTS_DIR


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=REPO_DIR / "src",
        help="roomcast source tree (its src directory)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="drills to run, comma-separated or repeated: " + ", ".join(d.name for d in DRILLS),
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--port-base",
        type=int,
        default=65481,
        help="first port servers use (taken ones are skipped)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("BEFORE", "AFTER"),
        help="print before/after tables from two --json files and exit",
    )
    args = parser.parse_args(argv)
    args.only = [name for item in args.only for name in item.split(",") if name]
    unknown = set(args.only) - {d.name for d in DRILLS}
    if unknown:
        parser.error(f"unknown drill(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    nofile = raise_nofile()
    tree = Tree.load(args.src.resolve())
    log_dir = RESULTS_DIR / f"hardening-{time.strftime('%Y%m%d-%H%M%S')}-{tree.commit[:7]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log(f"roomcast from {tree.imported_from} at {tree.commit[:12]}; server logs in {log_dir}")
    # SIGTERM ends the run like Ctrl-C: the drills' finally blocks stop their processes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        report = runner.run(run_drills(args.only, args.port_base, tree, log_dir, nofile))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
