"""``history.py``'s scale-out pair: two deployments of three ``roomcast serve --redis-url``
(``cluster.Cluster``), one with room history (the default) and one with ``--history-size 0``,
each with a redis-server of its own, up at the same time and measured in alternation:

- ``alternate``: broadcasts to all N clients, a few per step, the two deployments taking turns
  (the order reversed every other round), so that both see the same host;
- ``publish_rate``: many publishes in a row through instance 0's API port (each answered before
  the next), the deployments taking turns by blocks: redis-server's CPU per publish, net of its
  idle rate (``serverCron``), and the servers' CPU per publish.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from harness.cluster import Cluster, Kind
from harness.message import make_message
from harness.redis_stats import commands
from harness.report import log
from harness.stats import median, ratio
from harness.targets import SPECS
from harness.workers import wait_delivery

__all__ = ["PAIR", "alternate", "publish_rate"]

PAIR = (
    Kind(
        "history-on",
        "3 x `roomcast serve --redis-url` (history on: 100 messages, 300 s)",
        SPECS["roomcast"],
        redis=True,
        trigger_all=False,
    ),
    Kind(
        "history-off",
        "3 x `roomcast serve --redis-url --history-size 0`",
        SPECS["roomcast"],
        redis=True,
        trigger_all=False,
        flags=("--history-size", "0"),
    ),
)
"""History on, history off: the pair every comparison here takes its ratio of."""


def alternate(clusters: Sequence[Cluster], rounds: int, per_step: int) -> dict[str, Any]:
    """``rounds`` rounds of ``per_step`` broadcasts per deployment, in alternating order;
    per deployment every step's figures, and the medians; the ratio on ÷ off per round."""
    steps: dict[str, list[dict[str, Any]]] = {c.kind.name: [] for c in clusters}
    for r in range(rounds):
        for cluster in clusters if r % 2 == 0 else clusters[::-1]:
            phase = cluster.broadcasts(per_step)
            del phase["latency"]
            steps[cluster.kind.name].append(phase)
            log(
                f"{cluster.kind.name} round {r + 1}: {phase['us_per_msg']:.2f} µs/msg, redis "
                f"{phase['redis_ms_per_broadcast']:.2f} ms/broadcast, lost {phase['lost']}"
            )
    out: dict[str, Any] = {"steps": steps}
    for name, phases in steps.items():
        out[name] = {
            "us_per_msg": median([p["us_per_msg"] for p in phases]),
            "us_per_msg_range": [
                min(p["us_per_msg"] for p in phases),
                max(p["us_per_msg"] for p in phases),
            ],
            "redis_ms_per_broadcast": median([p["redis_ms_per_broadcast"] for p in phases]),
            "client_us_per_msg": median([p["client_us_per_msg"] for p in phases]),
            "lost": sum(p["lost"] for p in phases),
            "delivered": sum(p["delivered"] for p in phases),
        }
    on, off = (steps[k.name] for k in PAIR)
    out["round_ratios"] = [
        ratio(a["us_per_msg"], b["us_per_msg"]) for a, b in zip(on, off, strict=False)
    ]
    return out


def _publishes(cluster: Cluster, count: int, size: int, timeout: float) -> dict[str, float]:
    """``count`` publishes through instance 0, each answered before the next; then the wait
    until every client had them.  CPU and wall time of the publishes only."""
    assert cluster.workers is not None
    frames0 = cluster.workers.frames()
    cpu0, redis0 = sum(cluster.server_cpu_ns()), cluster.redis_cpu_ns()
    started = time.monotonic()
    for _ in range(count):
        cluster.targets[0].publish([make_message(cluster.seq, size)], timeout)
        cluster.seq += 1
    wall = time.monotonic() - started
    frames, _ = wait_delivery(cluster.workers, frames0 + count * cluster.connected, timeout)
    cpu1, redis1 = sum(cluster.server_cpu_ns()), cluster.redis_cpu_ns()
    return {
        "publishes": count,
        "wall_s": wall,
        "server_cpu_s": (cpu1 - cpu0) / 1e9,
        "redis_cpu_s": (redis1 - redis0) / 1e9,
        "lost": count * cluster.connected - (frames - frames0),
    }


def publish_rate(
    clusters: Sequence[Cluster], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """``--redis-publishes`` per deployment in blocks of ``--redis-block``, taking turns;
    redis-server's idle rate measured before and after."""
    idle: dict[str, list[float]] = {c.kind.name: [] for c in clusters}
    blocks: dict[str, list[dict[str, float]]] = {c.kind.name: [] for c in clusters}
    message_size = max(1, args.frame_size - 60)
    for cluster in clusters:
        cluster.broadcasts(1)  # warm-up: the scripts loaded, the connections to Redis open
        idle[cluster.kind.name].append(cluster.idle(args.idle_seconds)["redis_cpu_pct"])
    calls0 = {c.kind.name: commands(c.redis) for c in clusters}
    done = 0
    turn = 0
    while done < args.redis_publishes:
        count = min(args.redis_block, args.redis_publishes - done)
        for cluster in clusters if turn % 2 == 0 else clusters[::-1]:
            blocks[cluster.kind.name].append(
                _publishes(cluster, count, message_size, args.phase_timeout)
            )
        done += count
        turn += 1
    calls = {c.kind.name: commands(c.redis) - calls0[c.kind.name] for c in clusters}
    for cluster in clusters:
        idle[cluster.kind.name].append(cluster.idle(args.idle_seconds)["redis_cpu_pct"])
    out: dict[str, dict[str, Any]] = {}
    for cluster in clusters:
        name = cluster.kind.name
        phases = blocks[name]
        idle_rate = median(idle[name]) / 100
        publishes = sum(p["publishes"] for p in phases)
        wall = sum(p["wall_s"] for p in phases)
        redis_s = sum(p["redis_cpu_s"] for p in phases)
        out[name] = {
            "clients": cluster.connected,
            "publishes": publishes,
            "blocks": phases,
            "redis_idle_pct": idle[name],
            "redis_us_per_publish": redis_s * 1e6 / publishes,
            "redis_net_us_per_publish": (redis_s - idle_rate * wall) * 1e6 / publishes,
            "redis_block_us": [p["redis_cpu_s"] * 1e6 / p["publishes"] for p in phases],
            "server_us_per_publish": sum(p["server_cpu_s"] for p in phases) * 1e6 / publishes,
            "publish_ms": wall * 1e3 / publishes,
            "lost": sum(p["lost"] for p in phases),
            "commands_per_publish": {
                k: v / publishes for k, v in calls[name].most_common() if k != "info"
            },
        }
        log(
            f"{name}: redis {out[name]['redis_net_us_per_publish']:.1f} µs/publish net of idle, "
            f"servers {out[name]['server_us_per_publish']:.0f} µs/publish, "
            f"{out[name]['publish_ms']:.2f} ms per answered publish"
        )
    return out
