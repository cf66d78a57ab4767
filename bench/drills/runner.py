"""Runs the selected drills against one tree, one Markdown row per case as it goes; and the
before/after tables of ``--compare``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drills.api_port import drill_api
from drills.base import Case, Drill, Ports, Run, Tree
from drills.descriptors import drill_descriptors
from drills.expiry import drill_exp
from drills.fastapi_path import drill_fastapi
from drills.frames import drill_frames
from drills.logs import drill_logs
from drills.presence import drill_presence
from drills.rooms import drill_rooms
from drills.supervisor import drill_supervisor
from harness.meta import FASTAPI_PACKAGES, redis_version, run_meta
from harness.report import log

__all__ = ["DRILLS", "compare", "run_drills"]

DRILLS = (
    Drill("frames", "Empty continuation frames and a ping flood", 150, drill_frames),
    Drill("api", "API port: idle, slowloris and a 2 GB declared body", 90, drill_api),
    Drill(
        "descriptors", "Descriptors: RLIMIT_NOFILE 1,024, a burst of 1,500", 120, drill_descriptors
    ),
    Drill("fastapi", "FastAPI path: clients that never read", 90, drill_fastapi),
    Drill("rooms", "Rooms and memory", 300, drill_rooms),
    Drill("presence", "Presence snapshots re-asked 100 times a second", 90, drill_presence),
    Drill("exp", "Numeric-string exp", 40, drill_exp),
    Drill("supervisor", "kill -9 of the supervisor", 60, drill_supervisor),
    Drill("logs", "Log lines: slow consumers and a Redis outage", 120, drill_logs),
)
PACKAGES = (*FASTAPI_PACKAGES, "redis", "psutil")
"""The versions the results record (the driver's environment; the servers run the tree's
roomcast with these dependencies)."""


def table_row(drill: str, case: Case) -> str:
    figures = "; ".join(f"{name}: {value}" for name, value in case.figures.items())
    return f"| {drill} | {case.label} | {figures} |"


async def run_drills(
    only: Sequence[str], port_base: int, tree: Tree, log_dir: Path, nofile: int
) -> dict[str, Any]:
    """Run the drills named in ``only`` (all if empty), in ``DRILLS``' order, each within its
    time limit and with every process it started killed afterwards; print a row per case.
    Returns the figures with the run's metadata (``--json``)."""
    selected = [d for d in DRILLS if not only or d.name in only]
    run = Run(tree, Ports(port_base), log_dir)
    results: dict[str, list[dict[str, Any]]] = {}
    print("| drill | case | figures |\n|---|---|---|", flush=True)
    try:
        for drill in selected:
            log(f"drill {drill.name}: {drill.title} (at most {drill.limit:.0f} s)")
            started = time.monotonic()
            try:
                async with asyncio.timeout(drill.limit):
                    cases = await drill.run(run)
            except Exception as exc:  # one failed drill must not lose the others
                cases = [Case("drill failed", {"error": f"{type(exc).__name__}: {exc}"[:300]})]
            finally:
                run.kill_all()
            log(f"drill {drill.name} took {time.monotonic() - started:.0f} s")
            for case in cases:
                print(table_row(drill.name, case), flush=True)
            results[drill.name] = [dataclasses.asdict(case) for case in cases]
    finally:
        run.kill_all()
    return {
        **run_meta("bench/hardening.py", nofile, PACKAGES),
        "redis_server": redis_version(),
        "src": str(tree.src),
        "commit": tree.commit,
        "local_changes": tree.local_changes,
        "drills": {d.name: d.title for d in selected},
        "results": results,
    }


def compare(before_path: Path, after_path: Path) -> str:
    """Before/after Markdown tables, one per drill, from two ``--json`` files."""
    before, after = (json.loads(path.read_text()) for path in (before_path, after_path))
    out = []
    titles = {d.name: d.title for d in DRILLS}
    head_b, head_a = f"before (`{before['commit'][:7]}`)", f"after (`{after['commit'][:7]}`)"
    for name, title in titles.items():
        cases_b = {c["label"]: c["figures"] for c in before["results"].get(name, [])}
        cases_a = {c["label"]: c["figures"] for c in after["results"].get(name, [])}
        if not cases_b and not cases_a:
            continue
        out.append(
            f"### {title} (`{name}`)\n\n| case | figure | {head_b} | {head_a} |\n|---|---|---|---|"
        )
        for label in dict.fromkeys([*cases_b, *cases_a]):
            figures_b, figures_a = cases_b.get(label, {}), cases_a.get(label, {})
            for n, figure in enumerate(dict.fromkeys([*figures_b, *figures_a])):
                out.append(
                    f"| {'' if n else label} | {figure} | {figures_b.get(figure, '-')} | "
                    f"{figures_a.get(figure, '-')} |"
                )
        out.append("")
    return "\n".join(out)
