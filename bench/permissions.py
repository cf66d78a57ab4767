"""Permission checks: what capabilities in the token and namespaces cost a server.

    .venv/bin/python bench/permissions.py

One process per side, side by side at N (default 15,000), rounds alternating
(``harness/deployment.py``, as ``serve.py`` measures it), both with JWT authentication and the
same tokens, whose ``rooms`` claim holds 20 patterns, only the last of which grants the room
(``ben*``: each check walks every pattern):

- ``rules-off``: the server reads no capability claim (``--capabilities-claim`` names one the
  tokens do not have) and has no namespaces: every room follows the default namespace;
- ``rules-on``: the server reads the claim and has namespaces (``--config``).

So the difference is roomcast's own work: the claim parsed at the upgrade (once per distinct
claim, shared by the clients that carry it), the join and every publish checked.  (A bigger
token costs its own decoding on both sides alike: see BENCHMARKS.md.)  Every client joins at
the upgrade (``/ws/bench?token=...``), so the handshake CPU per connection includes the join
being checked.  Messages are published by a WebSocket client of the server's
(``harness/publisher.py``), so each one passes the publish check before its fan-out.
Each pairing runs twice, each side connecting first once (the second side connects beside the
first one's N clients, which alone costs it some 30 % more CPU per handshake here), and the
targets apply to the geometric mean of the two ratios: on ÷ off <= 1.05 for the handshake +
join CPU per connection and for the fan-out CPU per delivered message.

Prints Markdown tables, writes the raw figures to ``bench/results/permissions-*.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt

from harness.cli import add_worker_flags
from harness.deployment import side_by_side
from harness.limits import wide_port_range
from harness.meta import cpu_probe, run_meta
from harness.report import (
    fmt_ratio,
    log,
    problem_lines,
    publish,
    report_head,
    results_path,
    write_json,
)
from harness.runs import RESULTS_DIR, close_meta, prepare
from harness.stats import ratio
from harness.targets import PACKAGES, ROOM, Spec

SECRET = "bench-permissions-secret-of-32-bytes!"
TARGET = 1.05
NAMESPACES = """\
[namespaces.default]
allow = ["join", "publish", "presence", "history"]

[namespaces.chat]
allow = ["join"]
max_members = 1000

[namespaces.news]
publish = false
presence = false
"""


def token(user: str, claim: dict[str, list[str]] | None) -> str:
    claims: dict[str, Any] = {"sub": user, "exp": int(time.time()) + 24 * 3600}
    if claim is not None:
        claims["rooms"] = claim
    return jwt.encode(claims, SECRET, algorithm="HS256")


def capability_claim() -> dict[str, list[str]]:
    """20 patterns; only the last grants ``bench`` (so a check tries them all)."""
    claim = {f"team{i}:*": ["join", "publish", "presence"] for i in range(19)}
    claim["ben*"] = ["join", "publish"]
    return claim


def specs(config_path: Path) -> tuple[Spec, Spec]:
    claim = capability_claim()
    user, publisher = token("u", claim), token("publisher", claim)
    common = ("--jwt-secret", SECRET)
    off = Spec(
        "rules-off",
        "`roomcast serve --jwt-secret --capabilities-claim unread`: the tokens' claim is not "
        "read, no namespaces",
        "roomcast",
        path=f"/ws/{ROOM}?token={user}",
        flags=(*common, "--capabilities-claim", "unread"),
        publisher_path=f"/ws?token={publisher}",
    )
    on = Spec(
        "rules-on",
        "`roomcast serve --jwt-secret --config FILE`: the 20-pattern `rooms` claim read and "
        "checked, namespaces",
        "roomcast",
        path=f"/ws/{ROOM}?token={user}",
        flags=(*common, "--config", str(config_path)),
        publisher_path=f"/ws?token={publisher}",
    )
    return off, on


def ratios(results: list[dict[str, Any]]) -> list[str]:
    """Per pairing (which side connected first) and over both (geometric mean)."""
    lines = [
        "| N | connected first | figure | off | on | on ÷ off | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    figures = (
        ("handshake + join CPU ms/conn", "handshake_cpu_ms"),
        ("fan-out CPU µs/delivered msg (single)", "single_us"),
        ("fan-out CPU µs/delivered msg (bursts)", "burst_us"),
    )
    for n in sorted({r["connections"] for r in results}):
        pairs = []
        for first in ("rules-off", "rules-on"):
            pair = {r["server"]: r for r in results if (r["connections"], r["first"]) == (n, first)}
            if "rules-off" in pair and "rules-on" in pair:
                pairs.append((first, pair["rules-off"], pair["rules-on"]))
        for first, off, on in pairs:
            for figure, key in figures:
                value = ratio(on[key], off[key])
                lines.append(
                    f"| {n} | {first} | {figure} | {off[key]:.3f} | {on[key]:.3f} "
                    f"| {fmt_ratio(value)} | | |"
                )
            lost = off["lost"] + on["lost"]
            lines.append(
                f"| {n} | {first} | lost | {off['lost']} | {on['lost']} | | 0 | "
                f"{'yes' if lost == 0 else '**no**'} |"
            )
        if len(pairs) == 2:
            for figure, key in figures:
                values = [ratio(on[key], off[key]) for _, off, on in pairs]
                value = math.sqrt(values[0] * values[1])
                met = "yes" if value <= TARGET else "**no**"
                lines.append(
                    f"| {n} | both (geometric mean) | {figure} | | | **{fmt_ratio(value)}** "
                    f"| <= {TARGET} | {met} |"
                )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="15000", help="comma-separated N")
    parser.add_argument("--messages", type=int, default=20, help="single broadcasts per round")
    parser.add_argument("--min-messages", type=int, default=4)
    parser.add_argument("--bursts", type=int, default=5, help="bursts of 10 per round")
    parser.add_argument("--budget", type=float, default=6.0, help="see serve.py")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per server")
    parser.add_argument("--frame-size", type=int, default=180, help="frame payload bytes")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    add_worker_flags(parser, min_workers=2)
    parser.add_argument("--port", type=int, default=65301, help="first server port")
    parser.add_argument("--connect-spread", type=float, default=20.0)
    parser.add_argument("--connect-rate", type=float, default=2500.0)
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--phase-timeout", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--stall", type=float, default=10.0)
    parser.add_argument("--no-sysctl", action="store_true", help="leave the port range alone")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = prepare()
    config_path = RESULTS_DIR / "permissions-roomcast.toml"
    config_path.write_text(NAMESPACES)
    pair = specs(config_path)
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/permissions.py", nofile, PACKAGES),
        "servers": {s.name: s.what for s in pair},
        "args": dict(vars(args)),
        "cpu_probe_ms_before": cpu_probe(),
    }
    problems: list[str] = []
    results: list[dict[str, Any]] = []
    with wide_port_range(not args.no_sysctl) as port_range:
        meta["port_range"] = port_range
        for size_index, n in enumerate(int(n) for n in args.connections.split(",") if n):
            # Twice, each side connecting first once: the second to connect does so beside
            # the first's N clients, which costs it more than anything measured here.
            for order, specs_in_order in enumerate((pair, pair[::-1])):
                log(f"N={n}: {', '.join(s.name for s in specs_in_order)}")
                index = size_index * 2 + order
                found, trouble = side_by_side(args, specs_in_order, n, index, keep_cdf=False)
                results += [{**r, "first": specs_in_order[0].name} for r in found]
                problems += trouble
    close_meta(meta, started, problems)
    out = results_path("permissions")
    write_json(out, {"meta": meta, "results": results})
    report = [
        *report_head("permission checks on vs off", meta),
        *(f"- {name}: {what}" for name, what in meta["servers"].items()),
        "",
        *problem_lines(problems),
        *ratios(results),
        "",
    ]
    publish(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
