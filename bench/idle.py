"""Idle cost of the heartbeat, and the Redis load of the presence registry.

    .venv/bin/python bench/idle.py

Part 1, heartbeat: one ``roomcast serve`` process per heartbeat setting (``--variants``; by
default off, ``--ping-interval 20 --pong-timeout 20`` and ``--ping-interval 5``), all up at
the same time, each with N (15,000) idle picows clients of its own (``harness/clients.py``; picows
answers protocol pings itself).  Over the same idle windows: server CPU (user + system, all
threads, ``/proc/PID/task/*/schedstat``) per second, write/read syscalls per second
(``/proc/PID/io``: one ping out, one pong in), RSS per connection, client CPU, and from
``GET /metrics`` that no client was dropped (``roomcast_heartbeat_timeouts_total`` stays 0,
``roomcast_connections`` stays N).

Part 2, registry: a throwaway redis-server, K (3) ``PresenceRegistry`` instances in this
process, each with its own ``redis.asyncio.Redis`` client, together registering M (50,000)
connections (``add`` + ``join`` of one room of ~50 members) with ``ConnectionConfig``'s default
TTLs; then their refresh loops run for a number of whole rounds while ``INFO commandstats``,
``INFO stats`` and the redis-server's CPU are read before and after.  Optionally the same again
at a shorter ``refresh_interval`` (labelled), and the clean stop of one instance.

Prints Markdown tables (also written to ``bench/results/idle-*.md``), progress on stderr, the
raw figures to ``bench/results/idle-*.json``.  bench/README.md explains every figure.

This file is the order of the phases; a heartbeat server with its clients is
``harness/heartbeat.py``, the registries and their Redis load ``harness/registry_load.py``, the
tables ``harness/tables/idle.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harness.cli import add_frame_flags, add_worker_flags, framed
from harness.heartbeat import (
    IdleServer,
    auto_pong_default,
    heartbeat_problems,
    idle_window,
    minus_off,
    parse_variants,
    window_summary,
)
from harness.meta import cpu_probe, redis_version, run_meta
from harness.processes import die_with_parent
from harness.registry_load import RegistryFleet
from harness.report import log, problem_lines, publish, report_head, results_path, write_json
from harness.runs import RESULTS_DIR, close_meta, prepare
from harness.tables.idle import heartbeat_tables, registry_tables
from harness.targets import PACKAGES

if TYPE_CHECKING:
    from roomcast.testing import RedisServer


def run_heartbeat(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One server per heartbeat setting, all up at once, connected one after the other, then
    the idle windows; each setting's cost beyond the heartbeat-off server's."""
    variants = parse_variants(args.variants)
    servers: list[IdleServer] = []
    try:
        for index, variant in enumerate(variants):
            servers.append(IdleServer(args, variant, index))
        for server in servers:  # one after the other: the handshakes do not compete
            server.connect()
        log(f"heartbeat: all connected; settling {args.settle:g} s")
        time.sleep(args.settle)
        for i in range(args.windows):
            idle_window(servers, args.window)
            log(f"heartbeat window {i + 1}/{args.windows}: " + window_summary(servers))
        results = [s.summary() for s in servers]
    finally:
        for server in servers:
            server.stop()
    minus_off(results)
    return results


async def run_registry_async(args: argparse.Namespace, server: RedisServer) -> dict[str, Any]:
    """Register every connection, run the refresh loops at the default interval and at the
    extra ones, read Redis' memory, stop one instance cleanly."""
    fleet = RegistryFleet(args, server)
    try:
        result = fleet.describe()
        result["register"] = await fleet.register()
        windows = [await fleet.refresh(fleet.defaults.refresh_interval, "defaults")]
        for interval in args.extra_refresh_intervals:
            windows.append(await fleet.refresh(interval, f"refresh_interval={interval:g} s"))
        result["refresh"] = windows
        # Memory once the records are refreshed and the clients idle (no buffers in flight).
        result["memory"] = await fleet.memory()
        if args.measure_stop:
            result["clean_stop"] = await fleet.clean_stop()
    finally:
        await fleet.close()
    return result


def run_registry(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here, after --snapshot put its src/ first on sys.path.
    from roomcast.testing import RedisServer

    server = RedisServer(
        args.redis_port or None,
        log_path=RESULTS_DIR / "idle-redis.log",
        preexec_fn=die_with_parent,
    )
    try:
        server.start()
        return asyncio.run(run_registry_async(args, server))
    finally:
        server.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", default="heartbeat,registry", help="comma-separated: heartbeat, registry"
    )
    group = parser.add_argument_group("heartbeat")
    group.add_argument("--connections", type=int, default=15_000, help="clients per server")
    group.add_argument(
        "--variants",
        default="off=0,default=20/20,aggressive=5",
        help="name=ping_interval[/pong_timeout],... (0: heartbeat off); one server each",
    )
    group.add_argument("--windows", type=int, default=3, help="idle windows")
    group.add_argument(
        "--window",
        type=float,
        default=20.0,
        help="seconds per window (a multiple of every "
        "ping interval, so each window holds a whole number of pings per connection)",
    )
    group.add_argument("--settle", type=float, default=5.0, help="pause after the connects")
    add_worker_flags(group)
    group.add_argument("--connect-timeout", type=float, default=120.0)
    group.add_argument("--port", type=int, default=65301, help="first server port (2 each)")
    group = parser.add_argument_group("registry")
    group.add_argument("--registries", type=int, default=3, help="PresenceRegistry instances")
    group.add_argument("--registry-connections", type=int, default=50_000)
    group.add_argument("--conns-per-user", type=int, default=2)
    group.add_argument("--room-size", type=int, default=50, help="members per room")
    group.add_argument(
        "--register-concurrency", type=int, default=32, help="add+join in flight per instance"
    )
    group.add_argument("--register-timeout", type=float, default=300.0)
    group.add_argument("--refresh-rounds", type=int, default=6, help="refresh rounds measured")
    group.add_argument(
        "--refresh-slack",
        type=float,
        default=5.0,
        help="seconds a round may take beyond the interval before the window times out",
    )
    group.add_argument(
        "--extra-refresh-intervals",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[2.0],
        help="also measure these refresh_interval values (comma-separated; '' for none)",
    )
    group.add_argument("--measure-stop", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--stop-timeout", type=float, default=120.0)
    group.add_argument("--redis-port", type=int, default=0, help="0: a free port")
    add_frame_flags(
        parser,
        deadline_s=900.0,
        deadline_help="whole-run abort",
        snapshot_help="run the servers and the registries on roomcast's src/ as of COMMIT (git "
        "archive into a temporary directory, first on the servers' PYTHONPATH and on this "
        "process' sys.path) instead of the editable checkout",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    nofile = prepare()
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/idle.py", nofile, PACKAGES),
        "args": vars(args),
        "picows_client_auto_pong_default": auto_pong_default(),
        "redis_version": redis_version(),
        "cpu_probe_ms_before": cpu_probe(),
    }
    heartbeat: list[dict[str, Any]] = []
    registry: dict[str, Any] | None = None
    problems: list[str] = []
    with framed(args, meta, problems) as snap:
        if snap is not None:
            if any(name.partition(".")[0] == "roomcast" for name in sys.modules):
                raise RuntimeError("roomcast was imported before the snapshot was in place")
            args.roomcast_src = snap["src"]
            sys.path.insert(0, snap["src"])
            log(f"servers and registries run roomcast from a snapshot of {snap['commit']}")
        if "heartbeat" in parts:
            try:
                heartbeat = run_heartbeat(args)
            except Exception as exc:  # report it, keep the other part, clean up
                problems.append(f"heartbeat: {exc!r}")
                log(problems[-1])
        if "registry" in parts:
            try:
                registry = run_registry(args)
            except Exception as exc:  # report it, keep the other part, clean up
                problems.append(f"registry: {exc!r}")
                log(problems[-1])
    problems += heartbeat_problems(heartbeat, args.connections)
    close_meta(meta, started, problems)
    out = results_path("idle")
    write_json(out, {"meta": meta, "heartbeat": heartbeat, "registry": registry})
    report = [
        *report_head("Idle cost and registry load", meta, redis=meta["redis_version"]),
        *problem_lines(problems),
    ]
    if heartbeat:
        report += [heartbeat_tables(heartbeat, args), ""]
    if registry:
        report += [registry_tables(registry), ""]
    publish(report, out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
