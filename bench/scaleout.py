"""Scale-out: ~48k clients over three server processes, one broadcast reaching all of them.

    .venv/bin/python bench/scaleout.py

Three deployments, one after the other in the same run, each with the same N clients spread
evenly over three server processes on three ports:

- ``roomcast-redis``: three ``roomcast serve --redis-url`` sharing a throwaway redis-server; a
  broadcast is one ``POST /api/publish`` to instance 0, the other two get it through Redis.
- ``roomcast-redis-presence``: the same with ``--presence`` (cluster-wide presence, off by
  default with Redis), to show what it costs.
- ``roomcast-local``: the same three processes without Redis; a broadcast is one publish to
  each instance, the three sent at the same moment (the Redis-less floor).
- ``socketio-redis``: python-socketio with ``AsyncRedisManager`` in three uvicorn processes
  (``peers/socketio_redis.py``); a broadcast is ``sio.emit("msg", m, room="bench")`` on
  instance 0.

Per deployment: time until all N are connected, server CPU (three processes summed) per
delivered message, redis-server CPU per broadcast, server RSS per connection, time until
50/99/100 % of the N clients had each broadcast, losses; then the ratios its targets ask for.
bench/README.md explains every figure.

This file is the order of the phases and the targets; the deployments, and one of them at
work, are ``harness/cluster.py``, the tables ``harness/tables/scaleout.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from harness.cli import add_frame_flags, add_worker_flags, choose, framed
from harness.cluster import INSTANCES, KINDS, TARGET_CONNECT_N, Cluster, Kind
from harness.meta import cpu_probe, redis_version, run_meta
from harness.processes import die_with_parent
from harness.report import fmt, log, problem_lines, publish, report_head, results_path, write_json
from harness.runs import RESULTS_DIR, close_meta, prepare
from harness.stats import ratio
from harness.tables.scaleout import tables
from harness.targets import PACKAGES
from roomcast.testing import RedisServer

TARGET_REDIS_VS_LOCAL = 1.3
TARGET_VS_SOCKETIO = 15.0
TARGET_CONNECT_S = 15.0


def run_kind(
    args: argparse.Namespace, kind: Kind, index: int, redis: RedisServer | None
) -> dict[str, Any]:
    """One deployment: its servers up, the N clients connected, the broadcasts measured."""
    log(f"{kind.name}: starting {INSTANCES} servers, {args.connections} clients")
    cluster = Cluster(args, kind, index, redis)
    try:
        cluster.connect()
        return cluster.measure()
    finally:
        cluster.stop()


def target_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets, met or missed: one row each."""
    rows: list[dict[str, Any]] = []
    redis, local, sio = (
        results.get(k) for k in ("roomcast-redis", "roomcast-local", "socketio-redis")
    )
    with_presence = results.get("roomcast-redis-presence")

    def row(name: str, value: float, met: bool, detail: str) -> None:
        rows.append({"target": name, "value": value, "met": met, "detail": detail})

    if redis and local and "p100_ms" in redis and "p100_ms" in local:
        value = ratio(redis["p100_ms"], local["p100_ms"])
        row(
            f"roomcast-redis 100 % delivery <= {TARGET_REDIS_VS_LOCAL}x roomcast-local",
            value,
            value <= TARGET_REDIS_VS_LOCAL,
            f"{fmt(redis['p100_ms'])} ms ÷ {fmt(local['p100_ms'])} ms",
        )
    if redis and sio and "us_per_msg" in redis and "us_per_msg" in sio:
        value = ratio(sio["us_per_msg"], redis["us_per_msg"])
        row(
            f"socketio-redis ÷ roomcast-redis server CPU/msg >= {TARGET_VS_SOCKETIO:g}x",
            value,
            value >= TARGET_VS_SOCKETIO,
            f"{sio['us_per_msg']:.2f} µs ÷ {redis['us_per_msg']:.2f} µs",
        )
        value = ratio(sio["p100_ms"], redis["p100_ms"])
        row(
            f"socketio-redis ÷ roomcast-redis 100 % delivery time >= {TARGET_VS_SOCKETIO:g}x",
            value,
            value >= TARGET_VS_SOCKETIO,
            f"{fmt(sio['p100_ms'])} ms ÷ {fmt(redis['p100_ms'])} ms",
        )
    if redis and with_presence and "connect_s" in redis and "connect_s" in with_presence:
        row(
            "--presence: connect time with ÷ without (no target)",
            ratio(with_presence["connect_s"], redis["connect_s"]),
            True,
            f"{with_presence['connect_s']:.1f} s ÷ {redis['connect_s']:.1f} s; handshake CPU "
            f"{with_presence['handshake_cpu_ms']:.3f} ÷ {redis['handshake_cpu_ms']:.3f} ms",
        )
    for r in (redis, with_presence, local):
        if r and "lost" in r:
            row(f"{r['deployment']} lost == 0", r["lost"], r["lost"] == 0, f"{r['lost']}")
    for r in (redis, with_presence, local):
        if r and "connect_s" in r:
            value = r["connect_s_at_50k"]
            row(
                f"{r['deployment']}: {TARGET_CONNECT_N:,} connected <= {TARGET_CONNECT_S:g} s",
                value,
                value <= TARGET_CONNECT_S and r["connect_failures"] == 0,
                f"{r['connected']:,} in {r['connect_s']:.1f} s, scaled to "
                f"{TARGET_CONNECT_N:,}: {value:.1f} s",
            )
    return rows


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | value | measured | met |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['value']:.2f} | {r['detail']} "
            f"| {'yes' if r['met'] else '**no**'} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=48_000, help="N, over all servers")
    parser.add_argument(
        "--deployments", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS)
    )
    parser.add_argument("--messages", type=int, default=10, help="measured broadcasts")
    parser.add_argument("--warmup", type=int, default=1, help="broadcasts not counted")
    parser.add_argument("--frame-size", type=int, default=180, help="frame payload bytes")
    parser.add_argument(
        "--gap-ms", type=float, default=300.0, help="pause after a broadcast reached everyone"
    )
    add_worker_flags(parser)
    parser.add_argument(
        "--connect-spread",
        type=float,
        default=0.0,
        help="roomcast: connects started evenly over this many seconds (0: all at once, "
        "--concurrency in flight per worker)",
    )
    parser.add_argument(
        "--socketio-connect-spread",
        type=float,
        default=60.0,
        help="python-socketio: connects paced over this many seconds (it falls over unpaced)",
    )
    parser.add_argument("--port", type=int, default=65201, help="first server port")
    parser.add_argument("--redis-port", type=int, default=65290)
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--phase-timeout", type=float, default=60.0)
    parser.add_argument("--stall", type=float, default=10.0, help="no progress: message lost")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    add_frame_flags(
        parser,
        deadline_s=1800.0,
        deadline_help="the whole run is aborted after this",
        snapshot_help="run every server on roomcast's src/ as of COMMIT (git archive into a "
        "temporary directory, put first on their PYTHONPATH) instead of the editable "
        "checkout, so that edits made during the run do not change the code under test",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = choose(args.deployments, KINDS, "deployment")
    nofile = prepare()
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/scaleout.py", nofile, PACKAGES),
        "deployments": {k.name: k.what for k in kinds},
        "args": vars(args),
        "cpu_probe_ms_before": cpu_probe(),
    }
    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    redis: RedisServer | None = None
    try:
        with framed(args, meta, problems) as snap:
            if snap is not None:
                args.roomcast_src = snap["src"]
                log(f"servers run roomcast from a snapshot of {snap['commit']}")
            if any(k.redis for k in kinds):
                # Its own port (refused if taken): it never touches another Redis.
                redis = RedisServer(
                    args.redis_port,
                    ("--maxclients", "1000"),
                    log_path=RESULTS_DIR / "scaleout-redis.log",
                    preexec_fn=die_with_parent,
                )
                redis.start()
                meta["redis_version"] = redis_version()
            for index, kind in enumerate(kinds):
                try:
                    results[kind.name] = run_kind(args, kind, index, redis)
                except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                    problems.append(f"{kind.name}: {exc!r}")
                    log(problems[-1])
    finally:
        if redis is not None:
            redis.close()
    close_meta(meta, started, problems)
    rows = target_rows(results)
    out = results_path("scaleout")
    write_json(out, {"meta": meta, "results": results, "targets": rows})
    report = [
        *report_head(
            f"Scale-out: {args.connections:,} clients over {INSTANCES} processes",
            meta,
            redis=meta.get("redis_version", "no redis"),
            snapshot_label="servers on a `git archive` snapshot",
        ),
        *(f"- {k.name}: {k.what}" for k in kinds),
        "",
        *problem_lines(problems),
    ]
    if results:
        report += [tables(results, args), "", "Targets:", "", targets_table(rows), ""]
    publish(report, out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
