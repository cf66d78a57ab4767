"""One server under test with N clients of its own, as ``serve.py`` (and ``history.py``)
measures it: connect (paced or at full speed), single broadcasts and bursts of ``BURST``, a
warm-up that sizes the measured rounds, the idle CPU, the summary of the rounds (medians, the
delivery-time CDF); and ``side_by_side``, several servers at one N through alternating rounds.

The server is a ``targets.Target``; its clients are ``workers.Workers``.
"""

from __future__ import annotations

import argparse
import math
import time
from array import array
from collections.abc import Sequence
from typing import Any

from harness.clients import WorkerConfig
from harness.message import make_message
from harness.report import fmt, log
from harness.runs import RESULTS_DIR
from harness.stats import gc_delta, handshake_ms, latency_summary, median
from harness.targets import Spec, Target, envelope_bytes
from harness.workers import Workers, connect_counts, handshake_times, split, wait_delivery

__all__ = ["BURST", "Deployment", "measure_idle", "side_by_side"]

BURST = 10
"""Messages in one burst: one request, sent back to back in one event-loop iteration."""


class Deployment:
    """One server (``spec``) with ``n`` clients of its own; its ports and source addresses
    follow from ``size_index`` (which N) and ``index`` (which server)."""

    def __init__(self, args: argparse.Namespace, spec: Spec, n: int, size_index: int, index: int):
        self.args = args
        self.spec = spec
        self.n = n
        self.size_index = size_index
        self.index = index
        port = args.port + size_index * 20 + index * 2
        stem = f"serve-{n}-{spec.name}"
        self.target = Target(
            spec, port, RESULTS_DIR / f"{stem}.log", RESULTS_DIR / f"{stem}-gc.json"
        )
        self.workers: Workers | None = None
        self.connected = 0
        self.seq = 1
        self.frame_size = args.frame_size
        self.message_size = max(1, args.frame_size - envelope_bytes(spec))
        self.singles = args.messages
        self.bursts = args.bursts
        self.bursts_first_round_only = False
        self.rounds: list[dict[str, Any]] = []
        self.cdf_latencies = array("d")
        self.idle_ns_per_s: list[float] = []
        self.result: dict[str, Any] = {"server": spec.name, "connections": n}
        self._connect_marks: dict[str, Any] = {}

    # -------------------------------------------------------------- connecting

    def worker_configs(self) -> list[WorkerConfig]:
        args = self.args
        return [
            WorkerConfig(
                host="127.0.0.1",
                port=self.target.port,
                path=self.spec.path,
                source_address=f"127.{20 + self.size_index}.{self.index + 1}.{2 + i}",
                connections=share,
                protocol=self.spec.protocol,
                concurrency=args.concurrency,
            )
            for i, share in enumerate(split(self.n, args.per_worker, args.min_workers))
        ]

    def start_connect(self) -> None:
        time.sleep(0.2)
        self._connect_marks = {
            "rss0": self.target.rss_kib(),
            "cpu0": self.target.cpu_ns(),
            "t0": time.monotonic(),
        }
        self.workers = Workers(self.worker_configs())
        spread = self.args.connect_spread if self.spec.paced else self.n / self.args.connect_rate
        self.workers.send(("connect", spread))

    def finish_connect(self) -> None:
        assert self.workers is not None
        args, marks = self.args, self._connect_marks
        replies = self.workers.receive("connect", args.connect_spread + args.connect_timeout)
        ok, failed = connect_counts(replies)
        # The clients have their 101s; the server's last callbacks run within moments.  Read
        # the CPU before polling the connection count (roomcast's count is a /metrics scrape).
        time.sleep(0.2)
        marks["cpu1"] = self.target.cpu_ns()
        registered = self.target.wait_count(ok, timeout=30)
        marks["connect_s"] = time.monotonic() - marks["t0"]
        if failed or not registered:
            count = self.target.count()
            log(f"{self.spec.name} N={self.n}: {failed} connects failed; server has {count}")
        self.connected = ok
        marks["failed"] = failed
        marks["handshakes"] = handshake_times(replies)

    def after_connect(self) -> None:
        marks = self._connect_marks
        rss1, cpu1 = self.target.rss_kib(), marks["cpu1"]
        ok = max(1, self.connected)
        self.result.update(
            {
                "connected": self.connected,
                "connect_failures": marks["failed"],
                "connect_s": marks["connect_s"],
                "paced": self.spec.paced,
                "handshake_ms": handshake_ms(marks["handshakes"]),
                "rss_before_kib": marks["rss0"],
                "rss_after_kib": rss1,
                "kib_per_conn": (rss1 - marks["rss0"]) / ok,
                "handshake_cpu_ms": (cpu1 - marks["cpu0"]) / 1e6 / ok,
            }
        )
        log(
            f"{self.spec.name} N={self.connected}: connected in {marks['connect_s']:.1f}s, "
            f"{self.result['kib_per_conn']:.1f} KiB/conn, "
            f"{self.result['handshake_cpu_ms']:.3f} ms CPU/handshake"
        )

    # -------------------------------------------------------------- broadcasting

    def _phase(self, messages: int, per_request: int) -> dict[str, Any]:
        """``messages`` broadcasts, ``per_request`` back to back per publish request; the next
        request goes out ``--interval-ms`` after the previous one, and not before the previous
        one reached every client (or nothing arrived for 3 s)."""
        workers, target, args = self.workers, self.target, self.args
        assert workers is not None
        interval = args.interval_ms / 1000
        first = self.seq
        frames0 = workers.frames()
        gc0 = target.gc_stats()
        cpu0, wcpu0 = target.cpu_ns(), workers.cpu_s()
        user0, sys0 = target.user_sys_s()
        started = time.monotonic()
        sent = 0
        while sent < messages:
            tick = time.monotonic()
            batch = [
                make_message(self.seq + i, self.message_size)
                for i in range(min(per_request, messages - sent))
            ]
            self.seq += len(batch)
            sent += len(batch)
            target.publish(batch, timeout=args.phase_timeout)
            wait_delivery(
                workers,
                frames0 + sent * self.connected,
                timeout=args.phase_timeout,
                stall=args.stall,
            )
            time.sleep(max(0.0, tick + interval - time.monotonic()))
        frames1 = workers.frames()
        cpu1, wcpu1 = target.cpu_ns(), workers.cpu_s()
        user1, sys1 = target.user_sys_s()
        wall = time.monotonic() - started
        gc1 = target.gc_stats()
        reports = workers.call(("report", first, self.seq - 1), 60)
        delivered = frames1 - frames0
        cpu_s = (cpu1 - cpu0) / 1e9
        phase: dict[str, Any] = {
            "messages": messages,
            "per_request": per_request,
            "delivered": delivered,
            "expected": messages * self.connected,
            "lost": messages * self.connected - delivered,
            "server_cpu_s": cpu_s,
            "server_user_s": user1 - user0,
            "server_sys_s": sys1 - sys0,
            "client_cpu_s": wcpu1 - wcpu0,
            "wall_s": wall,
            "us_per_msg": cpu_s * 1e6 / max(1, delivered),
            "client_us_per_msg": (wcpu1 - wcpu0) * 1e6 / max(1, delivered),
            "latency": latency_summary(reports, first, messages, self.connected),
            "_reports": reports,
            "_first": first,
        }
        if gc0 is not None and gc1 is not None:
            phase["gc_collections"], phase["gc_s"] = gc_delta(gc0, gc1)
        return phase

    def run_round(self, singles: int, bursts: int, keep_cdf: bool) -> dict[str, Any]:
        single = self._phase(singles, 1)
        burst = self._phase(bursts * BURST, BURST) if bursts else None
        if keep_cdf:
            for report in single["_reports"]:
                for _sent, latencies in report.values():
                    self.cdf_latencies.extend(array("d", latencies))
        for phase in (single, burst):
            if phase is not None:
                del phase["_reports"], phase["_first"]
        return {"single": single, "burst": burst}

    def warm_up(self) -> None:
        """A short round, not counted; its CPU per message sizes the measured rounds.

        A server whose burst would take more than twice ``--budget`` (python-socketio at 5k
        and more) gets no warm-up burst and its bursts measured in the first round only."""
        args = self.args
        r = self.run_round(min(3, args.messages), 0, keep_cdf=False)
        per_message_s = max(1e-7, r["single"]["us_per_msg"] * 1e-6 * max(1, self.connected))
        self.singles = max(args.min_messages, min(args.messages, int(args.budget / per_message_s)))
        per_burst_s = per_message_s * BURST
        self.bursts = max(1, min(args.bursts, int(args.budget / per_burst_s)))
        self.bursts_first_round_only = per_burst_s > 2 * args.budget
        if not self.bursts_first_round_only:
            r["burst"] = self.run_round(1, 1, keep_cdf=False)["burst"]
        self.result["warm_up"] = r
        log(
            f"{self.spec.name} N={self.connected}: warm-up {r['single']['us_per_msg']:.2f} µs/msg; "
            f"measuring {self.singles} singles and {self.bursts} bursts of {BURST} per round"
            + (" (bursts in the first round only)" if self.bursts_first_round_only else "")
        )

    def bursts_in_round(self, round_index: int) -> int:
        return 0 if self.bursts_first_round_only and round_index > 0 else self.bursts

    def record(self, round_index: int, r: dict[str, Any]) -> None:
        self.rounds.append(r)
        s, b = r["single"], r["burst"]
        burst = f"{b['us_per_msg']:.2f} µs/msg" if b else "-"
        lost = s["lost"] + (b["lost"] if b else 0)
        log(
            f"{self.spec.name} N={self.connected} round {round_index + 1}: single "
            f"{s['us_per_msg']:.2f} µs/msg (p50 {fmt(s['latency']['median_ms']['p50'])} ms, "
            f"p100 {fmt(s['latency']['median_ms']['p100'])} ms), burst {burst}, lost {lost}, "
            f"gc {s.get('gc_collections', '-')}"
        )

    def summary(self) -> dict[str, Any]:
        result, rounds = self.result, self.rounds
        singles = [r["single"] for r in rounds]
        bursts = [r["burst"] for r in rounds if r["burst"] is not None]
        idle = median(self.idle_ns_per_s) / 1e9 if self.idle_ns_per_s else math.nan

        def net(phase: dict[str, Any]) -> float:
            cpu = phase["server_cpu_s"] - (0.0 if math.isnan(idle) else idle * phase["wall_s"])
            return float(cpu * 1e6 / max(1, phase["delivered"]))

        result.update(
            {
                "singles_per_round": self.singles,
                "bursts_per_round": self.bursts,
                "bursts_first_round_only": self.bursts_first_round_only,
                "frame_bytes": self.frame_size,
                "rounds": rounds,
                "single_us": median([p["us_per_msg"] for p in singles]),
                "single_us_range": [
                    min(p["us_per_msg"] for p in singles),
                    max(p["us_per_msg"] for p in singles),
                ],
                "single_net_us": median([net(p) for p in singles]),
                "single_us_per_request": median(
                    [p["server_cpu_s"] * 1e6 / max(1, p["messages"]) for p in singles]
                ),
                "burst_us": median([p["us_per_msg"] for p in bursts]),
                "burst_us_range": [
                    min(p["us_per_msg"] for p in bursts),
                    max(p["us_per_msg"] for p in bursts),
                ],
                "burst_net_us": median([net(p) for p in bursts]),
                "lost": sum(p["lost"] for p in singles + bursts),
                "idle_cpu_pct": idle * 100,
                "sys_pct": median(
                    [
                        p["server_sys_s"] * 100 / max(1e-9, p["server_user_s"] + p["server_sys_s"])
                        for p in singles
                    ]
                ),
                "client_us_per_msg": median([p["client_us_per_msg"] for p in singles]),
                "gc_collections": [
                    sum(p.get("gc_collections", [0, 0, 0])[g] for p in singles + bursts)
                    for g in range(3)
                ]
                if any("gc_collections" in p for p in singles)
                else None,
                "gc_s": sum(p.get("gc_s", 0.0) for p in singles + bursts),
            }
        )
        for key in ("p50", "p99", "p100"):
            result[f"{key}_ms"] = median([p["latency"]["median_ms"][key] for p in singles])
        if self.cdf_latencies:
            ordered = sorted(self.cdf_latencies)
            points = 400
            result["cdf_ms"] = [
                ordered[min(len(ordered) - 1, round(i * (len(ordered) - 1) / points))] * 1000
                for i in range(points + 1)
            ]
            result["cdf_samples"] = len(ordered)
        return result

    def stop(self) -> None:
        self.target.stop()
        if self.workers is not None:
            self.workers.stop()
            self.workers = None


def measure_idle(deployments: Sequence[Deployment], seconds: float) -> None:
    """CPU of every server over the same idle window (keepalive pings and timers)."""
    before = [d.target.cpu_ns() for d in deployments]
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    for d, cpu0 in zip(deployments, before, strict=True):
        d.idle_ns_per_s.append((d.target.cpu_ns() - cpu0) / elapsed)


def side_by_side(
    args: argparse.Namespace, specs: Sequence[Spec], n: int, size_index: int, keep_cdf: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every server at N: up side by side, connected (group by group), warmed up, their idle
    CPU over one window, then ``--rounds`` rounds in alternating order.  A server that fails
    is dropped (a problem), the others go on.  Returns the summaries and the problems."""
    deployments: list[Deployment] = []
    problems: list[str] = []
    try:
        for index, spec in enumerate(specs):
            deployments.append(Deployment(args, spec, n, size_index, index))
        ready: list[Deployment] = []
        for d in deployments:
            try:
                d.target.wait_ready()
                ready.append(d)
            except (RuntimeError, TimeoutError) as exc:
                problems.append(f"{d.spec.name} at N={n}: {exc}")
                log(problems[-1])
        # Servers without keepalive pings connect one at a time, at full speed; those with
        # pings together, paced evenly over --connect-spread seconds.
        groups = [[d] for d in ready if not d.spec.paced]
        paced = [d for d in ready if d.spec.paced]
        if paced:
            groups.append(paced)
        for group in groups:
            for d in group:
                d.start_connect()
            for d in group:
                d.finish_connect()
            time.sleep(1.0)
            for d in group:
                d.after_connect()
        live = [d for d in ready if d.connected]

        def failed(d: Deployment, exc: Exception) -> None:
            problems.append(f"{d.spec.name} at N={n}: {exc!r}; dropped (see {d.target.log_path})")
            log(problems[-1])
            live.remove(d)
            d.stop()

        for d in list(live):
            try:
                d.warm_up()
            except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                failed(d, exc)
        measure_idle(live, args.idle_seconds)
        for round_index in range(args.rounds):
            order = list(live) if round_index % 2 == 0 else live[::-1]
            for d in order:
                try:
                    d.record(
                        round_index,
                        d.run_round(d.singles, d.bursts_in_round(round_index), keep_cdf),
                    )
                except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                    failed(d, exc)
        return [d.summary() for d in live], problems
    finally:
        for d in deployments:
            d.stop()
