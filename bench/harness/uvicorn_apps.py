"""``apps.py``'s FastAPI apps on uvicorn, as ``fanout.py`` measures them: the server process
and its control endpoints (``/bench/broadcast``, ``/bench/count``, ``/bench/stats``), its client
workers (healthy ones, and the one that never reads), and one app with N clients through the
fan-out rounds: connect, broadcast steps, idle windows, the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from harness.clients import WorkerConfig
from harness.processes import ServerProcess
from harness.report import log
from harness.runs import BENCH_DIR, RESULTS_DIR
from harness.stats import gc_delta, handshake_ms, latency_summary, median
from harness.workers import Workers, connect_counts, handshake_times, split, wait_delivery

__all__ = [
    "AppDeployment",
    "AppServer",
    "client_cpus",
    "server_cpus",
    "slow_worker_config",
    "worker_configs",
]


def server_cpus(args: argparse.Namespace) -> set[int] | None:
    """CPU the servers run on with ``--pin``: the first one; clients get the others."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[0]} if args.pin and len(cpus) > 1 else None


def client_cpus(args: argparse.Namespace) -> tuple[int, ...]:
    """CPUs the client workers (and the driver) run on with ``--pin``: all but the first."""
    cpus = sorted(os.sched_getaffinity(0))
    return tuple(cpus[1:]) if args.pin and len(cpus) > 1 else ()


class AppServer:
    """One uvicorn subprocess serving ``apps:<name>_app``, and its control endpoints."""

    def __init__(self, name: str, port: int, log_path: Path, cpus: set[int] | None) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{port}"
        command = [
            *(sys.executable, "-m", "uvicorn", f"apps:{name}_app", "--app-dir", str(BENCH_DIR)),
            *("--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"),
            *("--http", "httptools", "--log-level", "warning"),
        ]
        self.process = ServerProcess(command, log_path, cpus=cpus)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.exited():
                raise RuntimeError(f"{self.name} server exited; see {self.log_path}")
            with contextlib.suppress(OSError):
                self.get("/bench/count", timeout=1.0)
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} server not ready after {timeout}s")

    def get(self, path: str, timeout: float = 10.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def post(self, path: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def count(self) -> int:
        return int(self.get("/bench/count")["connections"])

    def wait_count(self, wanted: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() == wanted:
                return True
            time.sleep(0.2)
        return False

    def idle_cpu_rate(self, seconds: float) -> float:
        """CPU seconds per second the server burns while nobody sends anything."""
        cpu0, started = self.process.cpu_s(), time.monotonic()
        time.sleep(seconds)
        return (self.process.cpu_s() - cpu0) / (time.monotonic() - started)

    def stop(self) -> None:
        self.process.stop()  # killed: a graceful shutdown of 15k websockets measures nothing


def worker_configs(
    args: argparse.Namespace, port: int, run_index: int, connections: int
) -> list[WorkerConfig]:
    return [
        WorkerConfig(
            host="127.0.0.1",
            port=port,
            path="/ws",
            source_address=f"127.0.{run_index % 250 + 1}.{2 + i}",
            connections=share,
            client=args.client,
            concurrency=args.concurrency,
            cpus=client_cpus(args),
        )
        for i, share in enumerate(split(connections, args.per_worker, args.min_workers))
    ]


def slow_worker_config(args: argparse.Namespace, port: int, run_index: int) -> WorkerConfig:
    """The one client that never reads (``SO_RCVBUF`` 4096), from its own source address."""
    return WorkerConfig(
        host="127.0.0.1",
        port=port,
        path="/ws",
        source_address=f"127.0.{run_index % 250 + 1}.250",
        connections=1,
        client=args.client,
        slow=True,
        cpus=client_cpus(args),
    )


class AppDeployment:
    """One server under test with its own client workers, for the fan-out scenario."""

    def __init__(self, args: argparse.Namespace, name: str, connections: int, index: int):
        self.args = args
        self.name = name
        self.connections = connections
        self.port = args.port + index
        self.index = index
        log_path = RESULTS_DIR / f"server-{index}-{name}-{connections}.log"
        self.server = AppServer(name, self.port, log_path, server_cpus(args))
        self.workers: Workers | None = None
        self.connected = 0
        self.rounds: list[dict[str, Any]] = []
        self._round: dict[str, Any] = {}
        self.idle_rates: list[float] = []
        self.result: dict[str, Any] = {"server": name, "connections": connections}

    def connect(self) -> None:
        """Connect the N clients (paced), and measure RSS and CPU around it."""
        args, server = self.args, self.server
        server.wait_ready()
        server.get("/bench/stats")
        time.sleep(0.5)
        rss0, cpu0 = server.process.rss_kib(), server.process.cpu_s()
        self.workers = Workers(worker_configs(args, self.port, self.index, self.connections))
        started = time.monotonic()
        replies = self.workers.call(
            ("connect", args.connect_spread), timeout=args.connect_spread + args.connect_timeout
        )
        ok, failed = connect_counts(replies)
        registered = server.wait_count(ok, timeout=30)
        connect_s = time.monotonic() - started
        if failed or not registered:
            log(
                f"{self.name} N={self.connections}: {failed} connects failed; "
                f"server has {server.count()}"
            )
        time.sleep(1.0)
        rss1, cpu1 = server.process.rss_kib(), server.process.cpu_s()
        self.connected = ok
        self.result.update(
            {
                "connected": ok,
                "connect_failures": failed,
                "connect_s": connect_s,
                "handshake_ms": handshake_ms(handshake_times(replies)),
                "rss_before_kib": rss0,
                "rss_after_kib": rss1,
                "kib_per_conn": (rss1 - rss0) / max(1, ok),
                "handshake_cpu_ms": (cpu1 - cpu0) * 1000 / max(1, ok),
            }
        )
        log(
            f"{self.name} N={ok}: connected in {connect_s:.1f}s, "
            f"{self.result['kib_per_conn']:.1f} KiB/conn"
        )

    def begin_round(self) -> None:
        self._round = {
            "stats": self.server.get("/bench/stats"),
            "messages": 0,
            "loop_s": 0.0,
            "completed": True,
            "delivered": 0,
            "expected": 0,
            "server_cpu_s": 0.0,
            "server_user_s": 0.0,
            "server_sys_s": 0.0,
            "client_cpu_s": 0.0,
            "wall_s": 0.0,
        }

    def step(self, first_seq: int, count: int) -> None:
        """Broadcast ``count`` messages (one POST) and wait for them; adds to the round."""
        args, server, workers, acc = self.args, self.server, self.workers, self._round
        assert workers is not None
        timeout = args.phase_timeout
        expected = count * self.connected
        frames0 = workers.frames()
        cpu0, wcpu0 = server.process.cpu_s(), workers.cpu_s()
        user0, sys0 = server.process.user_sys_s()
        wall0 = time.monotonic()
        answer = server.post(
            "/bench/broadcast",
            {
                "count": count,
                "size": args.size,
                "interval_ms": args.interval_ms,
                "start_seq": first_seq,
                "timeout_s": timeout,
            },
            timeout=timeout + 30,
        )
        frames1, _ = wait_delivery(workers, frames0 + expected, timeout=timeout)
        cpu1, wcpu1 = server.process.cpu_s(), workers.cpu_s()
        user1, sys1 = server.process.user_sys_s()
        acc["wall_s"] += time.monotonic() - wall0
        acc["messages"] += count
        acc["loop_s"] += answer["elapsed_s"]
        acc["completed"] = acc["completed"] and answer["completed"]
        acc["delivered"] += frames1 - frames0
        acc["expected"] += expected
        acc["server_cpu_s"] += cpu1 - cpu0
        acc["server_user_s"] += user1 - user0
        acc["server_sys_s"] += sys1 - sys0
        acc["client_cpu_s"] += wcpu1 - wcpu0

    def end_round(self, first_seq: int) -> dict[str, Any]:
        assert self.workers is not None
        acc = self._round
        stats0 = acc.pop("stats")
        gc_passes, gc_s = gc_delta(stats0, self.server.get("/bench/stats"))
        count = acc["messages"]
        reports = self.workers.call(("report", first_seq, first_seq + count - 1), 60)
        delivered = max(1, acc["delivered"])
        return {
            **acc,
            "lost": acc["expected"] - acc["delivered"],
            "us_per_msg": acc["server_cpu_s"] * 1e6 / delivered,
            "client_us_per_msg": acc["client_cpu_s"] * 1e6 / delivered,
            "gc_collections": gc_passes,
            "gc_s": gc_s,
            "latency": latency_summary(reports, first_seq, count, self.connected),
        }

    def record_round(self, round_index: int, r: dict[str, Any]) -> None:
        self.rounds.append(r)
        log(
            f"{self.name} N={self.connected} round {round_index + 1}: "
            f"{r['us_per_msg']:.2f} µs/msg (sys {r['server_sys_s']:.2f}s of "
            f"{r['server_cpu_s']:.2f}s, gc {r['gc_collections']} {r['gc_s']:.2f}s), "
            f"lost {r['lost']}, loop {r['loop_s']:.2f}s"
        )

    def measure_idle(self, windows: int) -> None:
        self.idle_rates += [self.server.idle_cpu_rate(1.0) for _ in range(windows)]

    def summary(self) -> dict[str, Any]:
        result, rounds = self.result, self.rounds
        # Median of 1 s windows: a full (gen-2) GC pass that lands in one window is ignored.
        idle_rate = median(self.idle_rates)
        for r in rounds:
            net_cpu = r["server_cpu_s"] - idle_rate * r["wall_s"]
            r["net_us_per_msg"] = net_cpu * 1e6 / max(1, r["delivered"])
        result.update(
            {
                "rounds": rounds,
                "idle_cpu_pct": idle_rate * 100,
                "idle_windows_pct": [x * 100 for x in self.idle_rates],
                "us_per_msg": median([r["us_per_msg"] for r in rounds]),
                "net_us_per_msg": median([r["net_us_per_msg"] for r in rounds]),
                "sys_pct": median(
                    [r["server_sys_s"] * 100 / max(1e-9, r["server_cpu_s"]) for r in rounds]
                ),
                "client_us_per_msg": median([r["client_us_per_msg"] for r in rounds]),
                "lost": sum(r["lost"] for r in rounds),
                "loop_s": median([r["loop_s"] for r in rounds]),
                "gen2_gcs": sum(r["gc_collections"][2] for r in rounds),
                "server_stats": self.server.get("/bench/stats"),
            }
        )
        for key in ("p50", "p99", "p100"):
            result[f"{key}_ms"] = median([r["latency"]["median_ms"][key] for r in rounds])
        return result

    def stop(self) -> None:
        self.server.stop()  # first: a server shutting down 15k websockets measures nothing
        if self.workers is not None:
            self.workers.stop()
