"""``history.py``'s recovery storm: three ``roomcast serve --redis-url`` sharing a
redis-server, N recovering clients (``recovery.py``) in one room spread evenly over them; all
their sockets cut at once while messages are published through the API port, then every
client back (on the next server) with ``since`` = its last position.

The figures: the connect and first-join CPU per client, the storm's time from the reconnect
command until the last client's ``ack`` (and its spread), the servers' CPU per reconnecting
client (handshake + join + replay), redis-server's CPU, and what every client lacks or got
twice against the room's final position.
"""

from __future__ import annotations

import argparse
import json
import time
from array import array
from typing import TYPE_CHECKING, Any

from harness.message import make_message
from harness.processes import cpu_ns_of
from harness.recovery import RecoveryConfig, run_worker
from harness.redis_stats import commands
from harness.report import log
from harness.runs import RESULTS_DIR
from harness.stats import handshake_ms
from harness.targets import ROOM, SPECS, Target
from harness.workers import Workers, shares, split

if TYPE_CHECKING:
    from roomcast.testing import RedisServer

__all__ = ["INSTANCES", "Storm"]

INSTANCES = 3


class Storm:
    """The three servers, their Redis and the recovering clients of one storm."""

    def __init__(self, args: argparse.Namespace, redis: RedisServer) -> None:
        self.args = args
        self.redis = redis
        self.targets = [
            Target(
                SPECS["roomcast"],
                args.storm_port + 2 * i,
                RESULTS_DIR / f"history-storm-{i}.log",
                RESULTS_DIR / f"history-storm-{i}-gc.json",
                extra_args=["--redis-url", redis.url],
            )
            for i in range(INSTANCES)
        ]
        self.workers: Workers | None = None
        self.seq = 1
        self.message_size = args.frame_size
        self.position: dict[str, Any] = {}
        self.result: dict[str, Any] = {"clients": args.storm_clients}

    def cpu_ns(self) -> tuple[int, int]:
        """(the three servers', redis-server's) nanoseconds on CPU."""
        return sum(t.cpu_ns() for t in self.targets), cpu_ns_of(self.redis.pid)

    def configs(self) -> list[RecoveryConfig]:
        ports = tuple(t.port for t in self.targets)
        configs = []
        for i, share in enumerate(shares(self.args.storm_clients, INSTANCES)):
            for w, connections in enumerate(split(share, self.args.per_worker, 1)):
                configs.append(
                    RecoveryConfig(
                        ports=ports,
                        home=i,
                        source_address=f"127.60.{i + 1}.{2 + w}",
                        connections=connections,
                        room=ROOM,
                        concurrency=self.args.concurrency,
                    )
                )
        return configs

    def _connect(self, shift: int) -> tuple[dict[str, Any], float]:
        """Every client (re)connects to server ``home + shift`` and joins; returns the
        figures and the time.time() the command went out."""
        assert self.workers is not None
        args = self.args
        calls0 = commands(self.redis)
        cpu0, redis0 = self.cpu_ns()
        started = time.time()
        replies = self.workers.call(
            ("connect", shift, args.storm_timeout), args.storm_timeout + args.connect_timeout
        )
        cpu1, redis1 = self.cpu_ns()
        calls = commands(self.redis) - calls0
        clients = max(1, args.storm_clients)
        acked = sorted(t - started for r in replies for t in array("d", r["acked_at"]))
        handshakes = sorted(t for r in replies for t in array("d", r["handshake_s"]))
        figures = {
            "connected": sum(r["connected"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "failures": [f for r in replies for f in r["failures"]][:3],
            "acked": sum(r["acked"] for r in replies),
            "recovered": sum(r["recovered"] for r in replies),
            "not_recovered": sum(r["not_recovered"] for r in replies),
            "replayed": sum(r["replayed"] for r in replies),
            "errors": sum(r["error_count"] for r in replies),
            "error_examples": [e for r in replies for e in r["errors"]][:3],
            "handshake_ms": handshake_ms(handshakes),
            "ack_ms": handshake_ms(acked),  # p50/p99/max after the command
            "last_ack_s": acked[-1] if acked else float("nan"),
            "server_cpu_s": (cpu1 - cpu0) / 1e9,
            "server_cpu_ms_per_client": (cpu1 - cpu0) / 1e6 / clients,
            "redis_cpu_s": (redis1 - redis0) / 1e9,
            "redis_cpu_us_per_client": (redis1 - redis0) / 1e3 / clients,
            "redis_commands": {k: v for k, v in calls.most_common(8) if k != "info"},
        }
        return figures, started

    def connect(self) -> None:
        for target in self.targets:
            target.wait_ready()
        self.workers = Workers(self.configs(), run=run_worker)
        first, _ = self._connect(0)
        self.result["connect"] = first
        log(
            f"storm: {first['connected']:,} connected, {first['acked']:,} joined in "
            f"{first['last_ack_s']:.1f} s, {first['server_cpu_ms_per_client']:.3f} ms server "
            f"CPU per client"
        )

    def publish(self, index: int) -> None:
        """One message through server ``index``'s API port; the answer carries its position."""
        target = self.targets[index % INSTANCES]
        answer = json.loads(target.publish([make_message(self.seq, self.message_size)], 30))
        self.seq += 1
        if "position" in answer:
            self.position = answer["position"]

    def wait_frames(self, expected: int, timeout: float) -> int:
        assert self.workers is not None
        deadline = time.monotonic() + timeout
        frames = 0
        while time.monotonic() < deadline:
            frames = self.workers.frames()
            if frames >= expected:
                break
            time.sleep(0.05)
        return frames

    def live(self, count: int) -> None:
        """``count`` messages everyone receives live, so positions come from messages."""
        for i in range(count):
            self.publish(i)
        expected = count * self.args.storm_clients
        self.result["live"] = {"messages": count, "received": self.wait_frames(expected, 60)}

    def cut_and_publish(self, count: int) -> None:
        """Every socket cut (the command goes to all workers at once) while ``count``
        messages are published, one request each, through the three API ports in turn."""
        assert self.workers is not None
        cpu0, redis0 = self.cpu_ns()
        started = time.monotonic()
        self.workers.send(("cut",))
        for i in range(count):
            self.publish(i)
        published_s = time.monotonic() - started
        cut = sum(self.workers.receive("cut", 60))
        time.sleep(1.0)  # the servers forget the last of the cut connections
        cpu1, redis1 = self.cpu_ns()
        self.result["cut"] = {
            "cut": cut,
            "messages": count,
            "publish_s": published_s,
            "position": dict(self.position),
            "open_after": sum(t.count() for t in self.targets),
            "server_cpu_s": (cpu1 - cpu0) / 1e9,
            "redis_cpu_s": (redis1 - redis0) / 1e9,
        }
        log(f"storm: {cut:,} cut, {count} published in {published_s:.1f} s, at {self.position}")

    def reconnect(self) -> None:
        """Every client back, on the next server, with ``since``: the storm."""
        figures, _ = self._connect(1)
        self.result["storm"] = figures
        log(
            f"storm: {figures['connected']:,} back, {figures['recovered']:,} recovered "
            f"({figures['not_recovered']} not), last ack after {figures['last_ack_s']:.2f} s, "
            f"{figures['server_cpu_ms_per_client']:.3f} ms server CPU per client"
        )

    def verify(self) -> None:
        """What every client lacks or got twice, against the room's final position."""
        assert self.workers is not None
        expected = self.result["live"]["messages"] + self.result["cut"]["messages"]
        self.wait_frames(expected * self.args.storm_clients, 10)
        replies = self.workers.call(
            ("verify", self.position.get("epoch", ""), self.position.get("offset", 0)), 60
        )
        check: dict[str, Any] = {
            key: sum(r[key] for r in replies)
            for key in (
                "members",
                "lost",
                "duplicates",
                "members_short",
                "members_doubled",
                "members_epoch_changed",
                "received",
                "dropped",
            )
        }
        check["expected_per_client"] = expected
        check["bases"] = sorted({b for r in replies for b in r["bases"]})
        check["drift"] = sorted({d for r in replies for d in r["drift"]})
        check["examples"] = [e for r in replies for e in r["examples"]][:5]
        self.result["check"] = check
        log(
            f"storm: lost {check['lost']}, duplicates {check['duplicates']} "
            f"(clients short {check['members_short']}, doubled {check['members_doubled']})"
        )

    def run(self) -> dict[str, Any]:
        self.connect()
        self.live(self.args.storm_live)
        self.cut_and_publish(self.args.storm_messages)
        self.reconnect()
        self.verify()
        return self.result

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        for target in self.targets:
            target.stop()
