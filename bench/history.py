"""Room history: what it costs the fan-out and Redis, and a recovery storm.

    .venv/bin/python bench/history.py

In one run, side by side:

1. Fan-out CPU per delivered message, ``roomcast serve`` with history (the default: 100
   messages, 300 s) and with ``--history-size 0``: one process each at N = 1,000 and 15,000
   (``harness/deployment.py``, as ``serve.py`` measures it); then three processes + a
   redis-server each (``harness/cluster.py``, as ``scaleout.py``), first with a few clients
   for redis-server's CPU per publish (the history script vs a plain PUBLISH), then with
   ``--cluster-connections`` clients for the fan-out.
2. A recovery storm (``harness/storm.py``): ``--storm-clients`` recovering clients over three
   processes + Redis in one room; every socket cut at once while ``--storm-messages`` are
   published through the API ports; every client back on the next server with ``since``.
   Checked: every client has every message exactly once; the time until the last client's
   ``ack`` with ``"recovered": true``; the servers' CPU per reconnecting client.

Prints Markdown tables, writes the raw figures to ``bench/results/history-*.json``.  The
method is this docstring and those of ``harness/storm.py``, ``harness/pairs.py`` and
``harness/recovery.py``; the tables are ``harness/tables/history.py``.  The defaults take
about 4.5 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

from harness.cli import add_frame_flags, add_worker_flags, framed
from harness.cluster import Cluster
from harness.deployment import BURST, side_by_side
from harness.meta import cpu_probe, redis_version, run_meta
from harness.pairs import PAIR, alternate, publish_rate
from harness.processes import die_with_parent
from harness.report import log, problem_lines, publish, report_head, results_path, write_json
from harness.runs import RESULTS_DIR, close_meta, prepare
from harness.storm import Storm
from harness.tables.history import tables, target_rows, targets_table
from harness.targets import PACKAGES, SPECS
from roomcast.testing import RedisServer

ON = SPECS["roomcast"]
OFF = dataclasses.replace(
    ON,
    name="roomcast-history-0",
    what="`roomcast serve --history-size 0`",
    flags=("--history-size", "0"),
)


def redis_server(port: int, name: str) -> RedisServer:
    redis = RedisServer(
        port,
        ("--maxclients", "1000"),
        log_path=RESULTS_DIR / f"history-{name}-redis.log",
        preexec_fn=die_with_parent,
    )
    redis.start()
    return redis


def with_redis(args: argparse.Namespace, connections: int, run: Any) -> dict[str, Any]:
    """The pair of deployments (history on, off) with ``connections`` clients each, each on
    a redis-server of its own; ``run(clusters)`` measures them; everything stopped after."""
    cluster_args = argparse.Namespace(
        **{**vars(args), "connections": connections, "port": args.cluster_port}
    )
    redises: list[RedisServer] = []
    clusters: list[Cluster] = []
    try:
        for index, kind in enumerate(PAIR):
            redises.append(redis_server(args.redis_port + index, kind.name))
            clusters.append(Cluster(cluster_args, kind, index, redises[-1]))
        for cluster in clusters:
            cluster.connect()
        return {"connect": {c.kind.name: c.result for c in clusters}, **run(clusters)}
    finally:
        for cluster in clusters:
            cluster.stop()
        for redis in redises:
            redis.close()


def run_storm(args: argparse.Namespace) -> dict[str, Any]:
    redis = redis_server(args.redis_port + 2, "storm")
    storm = Storm(args, redis)
    try:
        return storm.run()
    finally:
        storm.stop()
        redis.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="1000,15000", help="N of the one-process pair")
    parser.add_argument("--messages", type=int, default=20, help="single broadcasts per round")
    parser.add_argument("--min-messages", type=int, default=4)
    parser.add_argument("--bursts", type=int, default=5, help=f"bursts of {BURST} per round")
    parser.add_argument("--budget", type=float, default=6.0, help="as serve.py's --budget")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per server (one process)")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--connect-spread", type=float, default=0.0)
    parser.add_argument("--connect-rate", type=float, default=2500.0)
    parser.add_argument("--frame-size", type=int, default=180, help="frame payload bytes")
    add_worker_flags(parser, min_workers=2)
    parser.add_argument("--cluster-connections", type=int, default=45_000, help="0: skip")
    parser.add_argument("--cluster-rounds", type=int, default=6)
    parser.add_argument("--cluster-step", type=int, default=2, help="broadcasts per step")
    parser.add_argument("--gap-ms", type=float, default=300.0)
    parser.add_argument("--redis-clients", type=int, default=300, help="0: skip that phase")
    parser.add_argument("--redis-publishes", type=int, default=3000, help="per deployment")
    parser.add_argument("--redis-block", type=int, default=250)
    parser.add_argument("--storm-clients", type=int, default=10_000, help="0: skip the storm")
    parser.add_argument("--storm-live", type=int, default=5, help="messages before the cut")
    parser.add_argument("--storm-messages", type=int, default=100, help="published while cut")
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument("--port", type=int, default=65301, help="one-process servers")
    parser.add_argument("--cluster-port", type=int, default=65341)
    parser.add_argument("--storm-port", type=int, default=65381)
    parser.add_argument("--redis-port", type=int, default=65391, help="and the next two")
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--phase-timeout", type=float, default=60.0)
    parser.add_argument("--stall", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    add_frame_flags(
        parser,
        deadline_s=2400.0,
        deadline_help="the whole run is aborted after this",
        snapshot_help="run every server on roomcast's src/ as of COMMIT (git archive)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = prepare()
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/history.py", nofile, PACKAGES),
        "args": vars(args),
        "cpu_probe_ms_before": cpu_probe(),
    }
    results: dict[str, Any] = {}
    problems: list[str] = []
    with framed(args, meta, problems) as snap:
        if snap is not None:
            args.roomcast_src = snap["src"]
        meta["redis_version"] = redis_version()
        one: list[dict[str, Any]] = []
        for size_index, n in enumerate(int(n) for n in args.connections.split(",") if n):
            log(f"one process, N={n}: history on and off")
            found, trouble = side_by_side(args, [ON, OFF], n, size_index, keep_cdf=False)
            one += found
            problems += trouble
        results["one_process"] = one
        try:
            if args.redis_clients:
                log(f"redis per publish: {args.redis_clients} clients per deployment")
                results["redis"] = with_redis(
                    args, args.redis_clients, lambda cs: {"rate": publish_rate(cs, args)}
                )
            if args.cluster_connections:
                log(f"three processes + Redis, {args.cluster_connections:,} clients each")
                results["cluster"] = with_redis(
                    args,
                    args.cluster_connections,
                    lambda cs: alternate(cs, args.cluster_rounds, args.cluster_step),
                )
            if args.storm_clients:
                log(f"recovery storm: {args.storm_clients:,} clients")
                results["storm"] = run_storm(args)
        except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
            problems.append(repr(exc))
            log(problems[-1])
    close_meta(meta, started, problems)
    rows = target_rows(results)
    out = results_path("history")
    write_json(out, {"meta": meta, "results": results, "targets": rows})
    report = [
        *report_head("Room history: cost and recovery storm", meta, redis=meta["redis_version"]),
        *problem_lines(problems),
        tables(results, args),
        "",
        "Targets:",
        "",
        targets_table(rows),
        "",
    ]
    publish(report, out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
