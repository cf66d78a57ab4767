"""``idle.py``'s heartbeat part: ``roomcast serve`` at one heartbeat setting (a ``Variant``)
with idle clients of its own, its CPU, syscalls and RSS over idle windows shared by every
server, and the cost of the pings against the server without them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import time
from collections.abc import Sequence
from typing import Any

from harness.clients import WorkerConfig
from harness.processes import io_of
from harness.report import log
from harness.runs import RESULTS_DIR
from harness.targets import SPECS, Target, metrics_of
from harness.workers import Workers, connect_counts, split

__all__ = [
    "IdleServer",
    "Variant",
    "auto_pong_default",
    "heartbeat_problems",
    "idle_window",
    "minus_off",
    "parse_variants",
    "window_summary",
]


def auto_pong_default() -> bool | None:
    """picows' ``ws_connect(enable_auto_pong=...)`` default (the client does not set it)."""
    from picows import ws_connect

    parameter = inspect.signature(ws_connect).parameters.get("enable_auto_pong")
    return None if parameter is None else bool(parameter.default)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A heartbeat setting: ``--ping-interval`` (0: off) and ``--pong-timeout``."""

    name: str
    interval: float
    timeout: float | None
    """None: ``--pong-timeout`` not given (the server's default applies)."""

    @property
    def flags(self) -> list[str]:
        flags = ["--ping-interval", f"{self.interval:g}"]
        if self.timeout is not None:
            flags += ["--pong-timeout", f"{self.timeout:g}"]
        return flags


def parse_variants(text: str) -> list[Variant]:
    """``name=interval[/timeout],...``, e.g. ``off=0,default=20/20,aggressive=5``."""
    variants = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        name, _, setting = item.partition("=")
        interval, _, timeout = setting.partition("/")
        variants.append(Variant(name, float(interval), float(timeout) if timeout else None))
    return variants


class IdleServer:
    """One ``roomcast serve`` with its heartbeat setting and its own idle clients."""

    def __init__(self, args: argparse.Namespace, variant: Variant, index: int) -> None:
        self.args = args
        self.variant = variant
        self.index = index
        stem = f"idle-{variant.name}"
        self.target = Target(
            SPECS["roomcast"],
            args.port + index * 2,
            RESULTS_DIR / f"{stem}.log",
            RESULTS_DIR / f"{stem}-gc.json",
            extra_args=variant.flags,
            extra_env={"PYTHONPATH": args.roomcast_src} if args.roomcast_src else None,
        )
        self.workers: Workers | None = None
        self.connected = 0
        self.windows: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {
            "variant": variant.name,
            "flags": " ".join(variant.flags),
            "ping_interval": variant.interval,
            "pong_timeout": variant.timeout,
            "connections": args.connections,
        }

    @property
    def pid(self) -> int:
        return self.target.pid

    def metrics(self) -> dict[str, float]:
        return metrics_of(self.target.port)

    def worker_configs(self) -> list[WorkerConfig]:
        args = self.args
        return [
            WorkerConfig(
                host="127.0.0.1",
                port=self.target.port,
                path=SPECS["roomcast"].path,
                source_address=f"127.{60 + self.index}.1.{2 + i}",
                connections=share,
                concurrency=args.concurrency,
            )
            for i, share in enumerate(split(args.connections, args.per_worker, 2))
        ]

    def connect(self) -> None:
        args = self.args
        self.target.wait_ready()
        time.sleep(0.5)
        rss0 = self.target.rss_kib()
        self.workers = Workers(self.worker_configs())
        started = time.monotonic()
        replies = self.workers.call(("connect", 0.0), args.connect_timeout)
        ok, failed = connect_counts(replies)
        registered = self.target.wait_count(ok, timeout=30)
        connect_s = time.monotonic() - started
        self.connected = ok
        if failed or not registered:
            log(f"{self.variant.name}: {failed} connects failed; server has {self.target.count()}")
        self.result.update(
            {
                "connected": ok,
                "connect_failures": failed,
                "connect_s": connect_s,
                "rss_before_kib": rss0,
                "client_workers": len(replies),
            }
        )
        log(f"{self.variant.name}: {ok} connected in {connect_s:.1f} s ({failed} failed)")

    def mark(self) -> dict[str, Any]:
        assert self.workers is not None
        return {
            "t": time.monotonic(),
            "cpu_ns": self.target.cpu_ns(),
            "client_cpu_ns": self.workers.cpu_ns(),
            # read(2) calls: the idle server reads each pong with one call (uvloop reads with
            # read(2); its writes, and the picows clients' aiofastnet I/O, are not counted in
            # /proc/PID/io on this kernel, so the pings are counted by their pongs).
            "server_syscr": io_of(self.pid).get("syscr", 0),
        }

    def close_window(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        elapsed = after["t"] - before["t"]
        metrics = self.metrics()
        window = {
            "elapsed_s": elapsed,
            "server_cpu_s": (after["cpu_ns"] - before["cpu_ns"]) / 1e9,
            "client_cpu_s": (after["client_cpu_ns"] - before["client_cpu_ns"]) / 1e9,
            "server_reads_per_s": (after["server_syscr"] - before["server_syscr"]) / elapsed,
            "connections": int(metrics.get("roomcast_connections", -1)),
            "heartbeat_timeouts": int(metrics.get("roomcast_heartbeat_timeouts_total", -1)),
            "rss_kib": self.target.rss_kib(),
        }
        window["server_cpu_pct"] = window["server_cpu_s"] / elapsed * 100
        self.windows.append(window)

    def summary(self) -> dict[str, Any]:
        assert self.workers is not None
        windows = self.windows
        n = max(1, self.connected)
        elapsed = sum(w["elapsed_s"] for w in windows)
        cpu_s = sum(w["server_cpu_s"] for w in windows)
        client_s = sum(w["client_cpu_s"] for w in windows)
        state = self.workers.call(("state",), 10)
        rss_end = windows[-1]["rss_kib"] if windows else math.nan
        r = self.result
        r.update(
            {
                "windows": windows,
                "window_s": elapsed,
                "server_cpu_s": cpu_s,
                "server_cpu_pct": cpu_s / elapsed * 100,
                "server_cpu_pct_per_window": [w["server_cpu_pct"] for w in windows],
                "us_per_conn_s": cpu_s * 1e6 / elapsed / n,
                "client_cpu_pct": client_s / elapsed * 100,
                "client_us_per_conn_s": client_s * 1e6 / elapsed / n,
                "server_reads_per_s": sum(w["server_reads_per_s"] * w["elapsed_s"] for w in windows)
                / elapsed,
                "pongs": round(sum(w["server_reads_per_s"] * w["elapsed_s"] for w in windows)),
                "pings_per_s_expected": n / self.variant.interval if self.variant.interval else 0,
                "connections_seen": sorted({w["connections"] for w in windows}),
                "heartbeat_timeouts": max((w["heartbeat_timeouts"] for w in windows), default=-1),
                "client_disconnects": sum(s["disconnected"] for s in state),
                "close_codes": sorted({c for s in state for c in s["close_codes"]}),
                "rss_after_kib": rss_end,
                "kib_per_conn": (rss_end - r["rss_before_kib"]) / n,
            }
        )
        return r

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        self.target.stop()


def idle_window(servers: Sequence[IdleServer], seconds: float) -> None:
    """One idle window of ``seconds``, the same for every server."""
    before = [s.mark() for s in servers]
    time.sleep(seconds)
    after = [s.mark() for s in servers]
    for server, b, a in zip(servers, before, after, strict=True):
        server.close_window(b, a)  # the /metrics scrape falls between windows


def window_summary(servers: Sequence[IdleServer]) -> str:
    """Each server's CPU, connections and heartbeat timeouts in its last window."""
    return ", ".join(
        f"{s.variant.name} {s.windows[-1]['server_cpu_pct']:.2f} % "
        f"({s.windows[-1]['connections']} conns, "
        f"{s.windows[-1]['heartbeat_timeouts']} timeouts)"
        for s in servers
    )


def minus_off(results: list[dict[str, Any]]) -> None:
    """Add to each result its cost beyond the heartbeat-off server's (if one ran)."""
    off = next((r for r in results if not r["ping_interval"]), None)
    for r in results:
        if off is None:
            continue
        r["cpu_pct_minus_off"] = r["server_cpu_pct"] - off["server_cpu_pct"]
        r["us_per_conn_s_minus_off"] = r["us_per_conn_s"] - off["us_per_conn_s"]
        extra_cpu_s = r["server_cpu_s"] - off["server_cpu_s"] / off["window_s"] * r["window_s"]
        r["us_per_ping"] = extra_cpu_s * 1e6 / r["pongs"] if r["pongs"] else math.nan


def heartbeat_problems(results: list[dict[str, Any]], connections: int) -> list[str]:
    """A server that dropped clients or counted heartbeat timeouts, or that did not get all
    ``connections`` clients."""
    problems = []
    for r in results:
        if r["heartbeat_timeouts"] != 0 or r["connections_seen"] != [r["connected"]]:
            problems.append(
                f"{r['variant']}: heartbeat timeouts {r['heartbeat_timeouts']}, connections "
                f"{r['connections_seen']} (connected {r['connected']})"
            )
        if r["connected"] != connections:
            problems.append(f"{r['variant']}: {r['connected']} of {connections} connected")
    return problems
