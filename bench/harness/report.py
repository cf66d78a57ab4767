"""Progress on stderr, number formatting, and the parts every Markdown report shares: the
environment line, the host-steadiness line, the problems, the result files."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.runs import REPO_DIR, RESULTS_DIR

__all__ = [
    "environment_line",
    "fmt",
    "fmt_counts",
    "fmt_mb",
    "fmt_ratio",
    "log",
    "probe_text",
    "problem_lines",
    "publish",
    "report_head",
    "results_path",
    "spread",
    "steadiness_line",
    "write_json",
]

SNAPSHOT_LABEL = "a `git archive` snapshot"


def log(message: str) -> None:
    """A progress line on stderr, with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt(value: float, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals; "n/a" for NaN, "never" for infinity."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "never"
    return f"{value:.{digits}f}"


def fmt_ratio(value: float) -> str:
    """``1.23x``, or "n/a" for NaN (``stats.ratio``'s no-ratio)."""
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def fmt_mb(size: float) -> str:
    """``size`` bytes in MB (10^6 bytes), one decimal: ``12.3 MB``."""
    return f"{size / 1e6:.1f} MB"


def fmt_counts(counter: Counter[str]) -> str:
    """Outcomes and how often each came, the most common first: ``101: 900, 503: 600``;
    "none" for none."""
    return ", ".join(f"{key}: {value:,}" for key, value in counter.most_common()) or "none"


def spread(values: Sequence[float], digits: int = 2) -> str:
    """``min-max`` of ``values``."""
    if not values:
        return "n/a"
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def probe_text(probe: dict[str, float]) -> str:
    """One ``meta.cpu_probe`` result: ``min-max ms (median m)``."""
    return f"{probe['min']:.0f}-{probe['max']:.0f} ms (median {probe['median']:.0f})"


def environment_line(
    meta: dict[str, Any],
    *,
    redis: str | None = None,
    snapshot_label: str = SNAPSHOT_LABEL,
) -> str:
    """Which roomcast (commit, uncommitted src/ changes, or the snapshot the servers ran), the
    host, ``redis`` if given, and the package versions."""
    git, snap = meta["git"], meta.get("snapshot")
    if snap:
        code = (
            f"roomcast at {snap['commit']} ({snapshot_label}; the checkout was at "
            f"{git['commit']}, src changes: {git['src_changes']}); "
        )
    else:
        code = f"roomcast at {git['commit']} (src changes: {git['src_changes']}); "
    host = f"{meta['cpus']} CPUs, Linux {meta['kernel']}, Python {meta['python']}"
    if redis is not None:
        host += f", {redis}"
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    return f"{code}{host}; {versions}\n"


def steadiness_line(meta: dict[str, Any]) -> str:
    """The host-steadiness probe before and after the run."""
    probes = [meta["cpu_probe_ms_before"], meta["cpu_probe_ms_after"]]
    return (
        "Host steadiness (cpu_probe: a fixed Python loop, 30 runs): "
        + " before, ".join(probe_text(p) for p in probes)
        + " after the run.\n"
    )


def report_head(
    title: str,
    meta: dict[str, Any],
    *,
    redis: str | None = None,
    snapshot_label: str = SNAPSHOT_LABEL,
) -> list[str]:
    """A report's first lines: ``# TITLE, date, duration``, the command, the environment line
    (``redis``, ``snapshot_label``: see ``environment_line``), the host-steadiness line."""
    return [
        f"# {title}, {meta['date']}, {meta['duration_s']:.0f} s\n",
        f"`{meta['command']}`\n",
        environment_line(meta, redis=redis, snapshot_label=snapshot_label),
        steadiness_line(meta),
    ]


def problem_lines(problems: Sequence[str]) -> list[str]:
    """A "Problems:" list and a blank line, or nothing."""
    return ["Problems:", *(f"- {p}" for p in problems), ""] if problems else []


def results_path(scenario: str) -> Path:
    """``bench/results/SCENARIO-YYYYmmdd-HHMMSS.json``."""
    return RESULTS_DIR / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str))


def publish(lines: list[str], raw: Path) -> None:
    """End the report with the raw results' path, write it next to them as ``.md``, print it."""
    text = "\n".join([*lines, f"raw results: {raw.relative_to(REPO_DIR)}"])
    raw.with_suffix(".md").write_text(text + "\n")
    print(text)
