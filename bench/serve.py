"""``roomcast serve`` vs peer servers, side by side: broadcast CPU, memory, handshakes, delivery.

    .venv/bin/python bench/serve.py

For each N (default 1,000, 5,000, 15,000) every server in ``SPECS`` runs as one process with N
clients of its own: ``roomcast serve`` as shipped and two cyclic-GC variants of it, a raw picows
encode-once loop, websockets' ``broadcast()``, socketify pub/sub, the FastAPI docs loop on
uvicorn and python-socketio on uvicorn (the peers live in ``peers/``).  The client workers, the
delivery wait and the latency summary are the harness' (``harness/``).  Per server and N:
server CPU per delivered message for single broadcasts and for bursts of 10 back-to-back
messages, RSS per idle connection, handshake CPU per connection, time until 50/99/100 % of the
clients had a message, losses.  Prints Markdown tables, writes the raw figures to
``bench/results/serve-*.json`` and the delivery-time plot to ``bench/serve-latency.png``.
bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.clients import WorkerConfig
from harness.limits import wide_port_range
from harness.message import make_message
from harness.meta import cpu_probe, run_meta
from harness.report import (
    environment_line,
    fmt,
    fmt_ratio,
    log,
    problem_lines,
    publish,
    results_path,
    steadiness_line,
    write_json,
)
from harness.runs import BENCH_DIR, RESULTS_DIR, close_meta, prepare
from harness.stats import gc_delta, handshake_ms, latency_summary, linear_fit, median, ratio
from harness.targets import PACKAGES, SPECS, Spec, Target, envelope_bytes
from harness.workers import Workers, connect_counts, handshake_times, split, wait_delivery

PLOT_PATH = BENCH_DIR / "serve-latency.png"
BURST = 10
"""Messages in one burst: one request, sent back to back in one event-loop iteration."""


# ------------------------------------------------------------------ one server with N clients


class Deployment:
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


# ------------------------------------------------------------------ one N


def measure_idle(deployments: Sequence[Deployment], seconds: float) -> None:
    """CPU of every server over the same idle window (keepalive pings and timers)."""
    before = [d.target.cpu_ns() for d in deployments]
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    for d, cpu0 in zip(deployments, before, strict=True):
        d.idle_ns_per_s.append((d.target.cpu_ns() - cpu0) / elapsed)


def run_size(
    args: argparse.Namespace, specs: Sequence[Spec], n: int, size_index: int, keep_cdf: bool
) -> tuple[list[dict[str, Any]], list[str]]:
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


# ------------------------------------------------------------------ report


def tables(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    by_key = {(r["server"], r["connections"]): r for r in results}
    sizes = sorted({r["connections"] for r in results})
    lines = [
        f"Single: messages sent one per publish request, {args.interval_ms:g} ms apart (and "
        "never before the previous one reached every client); burst: "
        f"{BURST} messages back to back in one request. {args.rounds} measured rounds per "
        "server after a warm-up round, servers alternating; figures are medians over rounds "
        "(min-max). Frames of "
        f"{args.frame_size} B. CPU: server user+sys per delivered message.",
        "",
        "| server | N | single µs/msg | burst µs/msg | burst/single | single vs raw picows "
        "| KiB/conn | handshake CPU ms/conn | delivery p50 / p99 / p100 ms | lost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        raw = by_key.get(("picows-raw", r["connections"]))
        single_lo, single_hi = r["single_us_range"]
        burst_lo, burst_hi = r["burst_us_range"]
        lines.append(
            f"| {r['server']} | {r['connected']} "
            f"| **{r['single_us']:.2f}** ({single_lo:.2f}-{single_hi:.2f}) "
            f"| {r['burst_us']:.2f} ({burst_lo:.2f}-{burst_hi:.2f}) "
            f"| {fmt_ratio(ratio(r['burst_us'], r['single_us']))} "
            f"| {fmt_ratio(ratio(r['single_us'], raw['single_us'])) if raw else 'n/a'} "
            f"| {r['kib_per_conn']:.1f} | {r['handshake_cpu_ms']:.3f} "
            f"| {fmt(r['p50_ms'])} / {fmt(r['p99_ms'])} / {fmt(r['p100_ms'])} | {r['lost']} |"
        )
    lines += [
        "",
        "roomcast serve (as shipped) against the floor (raw picows) and python-socketio:",
        "",
        "| N | single CPU vs raw picows | paired rounds: median (min-max) "
        "| burst CPU vs raw picows | KiB/conn vs raw picows "
        "| handshake CPU vs raw picows | socketio single CPU ÷ roomcast "
        "| socketio burst CPU ÷ roomcast |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        ours, raw, sio = (by_key.get((s, n)) for s in ("roomcast", "picows-raw", "socketio"))
        if ours is None:
            continue
        cells = [
            fmt_ratio(ratio(ours[k], raw[k])) if raw else "n/a"
            for k in ("single_us", "burst_us", "kib_per_conn", "handshake_cpu_ms")
        ]
        cells += [
            fmt_ratio(ratio(sio[k], ours[k])) if sio else "n/a" for k in ("single_us", "burst_us")
        ]
        if raw:
            # picows-raw and roomcast run next to each other in every round (the order
            # alternates): the ratio of one round's pair shares the host's mood of the moment.
            paired = [
                b["single"]["us_per_msg"] / a["single"]["us_per_msg"]
                for a, b in zip(raw["rounds"], ours["rounds"], strict=False)
            ]
            cells.insert(1, f"{median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})")
        else:
            cells.insert(1, "n/a")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if len(sizes) >= 2:
        lines += [
            "",
            "Marginal cost: server CPU per single broadcast request = a + b x N, least squares "
            "over the N values. b (µs per delivered message) leaves out what a server spends "
            "per request whatever N is (the publish request, building the frame, socketify's "
            "busy polling after each event).",
            "",
            "| server | b: µs per delivery | b vs raw picows |",
            "|---|---|---|",
        ]
        fits = {
            name: marginal_fit(results, name)
            for name in dict.fromkeys(r["server"] for r in results)
        }
        raw_fit = fits.get("picows-raw")
        for name, fit in fits.items():
            if fit is None:
                continue
            versus = fmt_ratio(ratio(fit[0], raw_fit[0])) if raw_fit else "n/a"
            lines.append(f"| {name} | {fit[0]:.2f} | {versus} |")
    gc_rows = [r for r in results if r["server"].startswith("roomcast")]
    if gc_rows:
        lines += [
            "",
            "Cyclic GC in roomcast serve (passes per generation during the measured rounds, "
            "where the launcher could count them):",
            "",
            "| server | N | single µs/msg | vs shipped | burst µs/msg | vs shipped "
            "| GC passes gen0/1/2 | GC s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in gc_rows:
            shipped = by_key.get(("roomcast", r["connections"]))
            passes = "/".join(str(x) for x in r["gc_collections"]) if r["gc_collections"] else "-"
            lines.append(
                f"| {r['server']} | {r['connected']} | {r['single_us']:.2f} "
                f"| {fmt_ratio(ratio(r['single_us'], shipped['single_us'])) if shipped else 'n/a'} "
                f"| {r['burst_us']:.2f} "
                f"| {fmt_ratio(ratio(r['burst_us'], shipped['burst_us'])) if shipped else 'n/a'} "
                f"| {passes} | {r['gc_s']:.3f} |"
            )
    lines += [
        "",
        "| server | N | singles / bursts per round | single net of idle µs/msg | idle CPU % "
        "| sys share | client µs/msg | connect s (paced) | handshake p99 ms | GC passes 0/1/2 "
        "| per-round single µs/msg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        passes = "/".join(str(x) for x in r["gc_collections"]) if r["gc_collections"] else "-"
        per_round = ", ".join(f"{x['single']['us_per_msg']:.2f}" for x in r["rounds"])
        lines.append(
            f"| {r['server']} | {r['connected']} | {r['singles_per_round']} / "
            f"{r['bursts_per_round']}{' (1st round only)' if r['bursts_first_round_only'] else ''} "
            f"| {r['single_net_us']:.2f} | {r['idle_cpu_pct']:.1f} "
            f"| {r['sys_pct']:.0f} % | {r['client_us_per_msg']:.2f} "
            f"| {r['connect_s']:.1f}{' (paced)' if r['paced'] else ''} "
            f"| {fmt(r['handshake_ms']['p99'])} | {passes} | {per_round} |"
        )
    return "\n".join(lines)


def marginal_fit(results: list[dict[str, Any]], name: str) -> tuple[float, float] | None:
    """(slope µs per client, intercept µs per request) of single-broadcast CPU over N."""
    return linear_fit(
        [
            (float(r["connected"]), float(r["single_us_per_request"]))
            for r in results
            if r["server"] == name
        ]
    )


def targets_check(results: list[dict[str, Any]]) -> str:
    """roomcast serve's targets, met or missed, per N."""
    by_key = {(r["server"], r["connections"]): r for r in results}
    lines = ["| N | target | value | met |", "|---|---|---|---|"]
    for n in sorted({r["connections"] for r in results}):
        ours = by_key.get(("roomcast", n))
        if ours is None:
            continue
        raw, sio = by_key.get(("picows-raw", n)), by_key.get(("socketio", n))
        checks: list[tuple[str, float, bool]] = []
        if raw:
            value = ours["single_us"] / raw["single_us"]
            checks.append(("single CPU/msg <= 1.1x raw picows", value, value <= 1.1))
            value = ours["handshake_cpu_ms"] / raw["handshake_cpu_ms"]
            checks.append(("handshake CPU <= 1.1x raw picows", value, value <= 1.1))
        value = ours["burst_us"] / ours["single_us"]
        checks.append(("burst/single CPU <= 0.5x", value, value <= 0.5))
        checks.append(("KiB/conn <= 8", ours["kib_per_conn"], ours["kib_per_conn"] <= 8))
        if sio:
            value = sio["single_us"] / ours["single_us"]
            checks.append(("socketio ÷ roomcast single CPU >= 20x", value, value >= 20))
        checks.append(("lost == 0", ours["lost"], ours["lost"] == 0))
        for name, value, met in checks:
            lines.append(f"| {n} | {name} | {value:.2f} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Delivery-time CDF per N, one line per server."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot (pip install -r bench/requirements.txt)")
        return False
    sizes = sorted({r["connections"] for r in results if r.get("cdf_ms")})
    if not sizes:
        return False
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for r in results:
            if r["connections"] != n or not r.get("cdf_ms"):
                continue
            values = r["cdf_ms"]
            fractions = [i / (len(values) - 1) for i in range(len(values))]
            ax.plot([max(v, 0.01) for v in values], fractions, label=r["server"])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("delivery time, ms (publish request sent -> client has it)")
        ax.set_title(f"N = {n:,} clients, single broadcasts")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of (message, client) deliveries")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="1000,5000,15000", help="comma-separated N")
    parser.add_argument("--servers", default=",".join(SPECS), help="comma-separated names")
    parser.add_argument("--messages", type=int, default=20, help="single broadcasts per round")
    parser.add_argument("--min-messages", type=int, default=4, help="fewest singles per round")
    parser.add_argument("--bursts", type=int, default=5, help=f"bursts of {BURST} per round")
    parser.add_argument(
        "--budget",
        type=float,
        default=6.0,
        help="server CPU seconds a round's singles (and, separately, its bursts) may take, "
        "by the warm-up's estimate: slow servers get fewer messages (never fewer than "
        "--min-messages singles and one burst)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per server")
    parser.add_argument("--frame-size", type=int, default=180, help="frame payload bytes")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--per-worker", type=int, default=7500, help="connections per process")
    parser.add_argument("--min-workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--port", type=int, default=65101, help="first server port")
    parser.add_argument(
        "--connect-spread",
        type=float,
        default=20.0,
        help="servers with keepalive pings get their connects evenly over this many seconds",
    )
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=2500.0,
        help="connects per second for the servers without keepalive pings (one at a time)",
    )
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--phase-timeout", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument(
        "--stall",
        type=float,
        default=10.0,
        help="a message counts as lost once nothing arrived for this many seconds "
        "(python-socketio queues a whole broadcast before its first frame goes out)",
    )
    parser.add_argument("--plot", type=Path, default=PLOT_PATH)
    parser.add_argument("--no-sysctl", action="store_true", help="leave the port range alone")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = prepare()
    problems: list[str] = []
    specs: list[Spec] = []
    for name in (s for s in args.servers.split(",") if s):
        if name not in SPECS:
            raise SystemExit(f"unknown server {name!r}; known: {', '.join(SPECS)}")
        module = {"socketify": "socketify", "socketio": "socketio"}.get(name)
        if module and importlib.util.find_spec(module) is None:
            problems.append(f"{name}: package not installed, skipped")
            continue
        specs.append(SPECS[name])
    sizes = [int(n) for n in args.connections.split(",") if n]
    started = time.monotonic()
    meta: dict[str, Any] = {
        **run_meta("bench/serve.py", nofile, PACKAGES),
        "servers": {s.name: s.what for s in specs},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpu_probe_ms_before": cpu_probe(),
    }
    results: list[dict[str, Any]] = []
    with wide_port_range(not args.no_sysctl) as port_range:
        meta["port_range"] = port_range
        for size_index, n in enumerate(sizes):
            log(f"N={n}: {', '.join(s.name for s in specs)}")
            found, trouble = run_size(args, specs, n, size_index, keep_cdf=True)
            results += found
            problems += trouble
    close_meta(meta, started, problems)
    out = results_path("serve")
    write_json(out, {"meta": meta, "results": results})
    plotted = plot(results, args.plot)
    report = [
        f"# roomcast serve vs peers, {meta['date']}, {meta['duration_s']:.0f} s\n",
        f"`{meta['command']}`\n",
        environment_line(meta),
        steadiness_line(meta),
        *(f"- {name}: {what}" for name, what in meta["servers"].items()),
        "",
        *problem_lines(problems),
    ]
    if results:
        report += [tables(results, args), "", "Targets:", "", targets_check(results), ""]
    if plotted:
        report.append(f"plot: {args.plot}")
    publish(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
