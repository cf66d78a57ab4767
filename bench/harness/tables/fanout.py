"""``fanout.py``'s report: the fan-out rounds (CPU, memory, handshakes, delivery), their
details and the ratios against the plain loop, and the slow client."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.report import environment_line, fmt, probe_text
from harness.runs import REPO_DIR
from harness.stats import median

__all__ = ["batch_text", "fanout_tables", "print_report", "slow_table"]


def batch_text(args: argparse.Namespace) -> str:
    if args.batch:
        return f"{args.batch} message(s)"
    return f"ceil({args.batch_deliveries} / N) message(s)"


def fanout_tables(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Each server holds N connections (opened evenly over {args.connect_spread:g} s); "
        f"{args.rounds} measured rounds of {args.messages} broadcasts of {args.size} B per "
        f"server, {args.interval_ms:g} ms apart, in steps of {batch_text(args)} that alternate "
        "between the servers; one warm-up round first. CPU figures: median over rounds "
        "(min-max); latencies: median over messages, then over rounds.",
        "",
        "| server | N | server CPU µs/msg | net of keepalive µs/msg | lost | KiB/conn "
        "| handshake CPU ms/conn | connect s | handshake p99 ms | delivery p50 / p99 / p100 ms "
        "| client CPU µs/msg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        raw = [x["us_per_msg"] for x in r["rounds"]]
        net = [x["net_us_per_msg"] for x in r["rounds"]]
        lines.append(
            f"| {r['server']} | {r['connected']} "
            f"| **{r['us_per_msg']:.2f}** ({min(raw):.2f}-{max(raw):.2f}) "
            f"| {r['net_us_per_msg']:.2f} ({min(net):.2f}-{max(net):.2f}) | {r['lost']} "
            f"| {r['kib_per_conn']:.1f} | {r['handshake_cpu_ms']:.2f} | {r['connect_s']:.1f} "
            f"| {fmt(r['handshake_ms']['p99'])} "
            f"| {fmt(r['p50_ms'])} / {fmt(r['p99_ms'])} / {fmt(r['p100_ms'])} "
            f"| {r['client_us_per_msg']:.2f} |"
        )
    lines += [
        "",
        "| server | N | sys share of server CPU | idle server CPU % (keepalive) "
        "| gen-2 GC passes in rounds | broadcast loop s | per-round µs/msg |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per_round = ", ".join(f"{x['us_per_msg']:.2f}" for x in r["rounds"])
        lines.append(
            f"| {r['server']} | {r['connected']} | {r['sys_pct']:.0f} % "
            f"| {r['idle_cpu_pct']:.1f} | {r['gen2_gcs']} | {r['loop_s']:.2f} | {per_round} |"
        )
    lines += [
        "",
        "| server / plain | N | CPU µs/msg | net of keepalive | paired rounds: median (min-max) "
        "| KiB/conn | handshake CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["server"], r["connections"]): r for r in results}
    others = sorted({r["server"] for r in results} - {"plain"})
    for name, n in (
        (name, n) for name in others for n in sorted({r["connections"] for r in results})
    ):
        plain, ours = by_key.get(("plain", n)), by_key.get((name, n))
        if plain is None or ours is None:
            continue
        cells = [
            f"{ours[key] / plain[key]:.2f}x"
            for key in ("us_per_msg", "net_us_per_msg", "kib_per_conn", "handshake_cpu_ms")
        ]
        # Round i of each server ran back to back: their ratio shares the machine's mood.
        paired = [
            b["us_per_msg"] / a["us_per_msg"]
            for a, b in zip(plain["rounds"], ours["rounds"], strict=False)
        ]
        cells.insert(2, f"{median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})")
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slow_table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.slow_connections} healthy clients + 1 that never reads (SO_RCVBUF 4096); "
        f"{args.slow_messages} messages of {args.slow_size} B, {args.slow_interval_ms:g} ms "
        f"apart; broadcast loop cancelled after {args.slow_timeout:g} s.",
        "",
        "| server | broadcast loop s | completed | messages sent | healthy received % "
        "| healthy p99 ms (median / worst msg) | slow client closed by server "
        "| slow client after resuming reads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        view = r["slow_client"]
        codes = ",".join(str(c) for c in view["close_codes"]) or "none"
        seen = (
            f"{view['frames_before_resume'] + view['frames_after_resume']} msgs, close code {codes}"
        )
        closed = "yes" if r["slow_closed_by_server"] else "no"
        stats = r["server_stats"]
        if "slow_consumer_closes" in stats:
            closed += f" (slow_consumer_closes={stats['slow_consumer_closes']})"
        lines.append(
            f"| {r['server']} | {r['loop_s']:.2f} | {r['completed']} "
            f"| {r['messages_sent']}/{args.slow_messages} | {r['healthy_pct']:.1f} "
            f"| {fmt(r['healthy_p99_ms_median'])} / {fmt(r['healthy_p99_ms_worst'])} "
            f"| {closed} | {seen} |"
        )
    return "\n".join(lines)


def print_report(
    meta: dict[str, Any],
    fanout: list[dict[str, Any]],
    slow: list[dict[str, Any]],
    args: argparse.Namespace,
    out: Path,
) -> None:
    """The whole report on stdout: the run, the host's steadiness, the tables, the raw file."""
    print(f"# fan-out benchmark, {meta['date']}, {meta['duration_s']:.0f} s\n")
    print(f"`{meta['command']}`\n")
    print(environment_line(meta))
    probes = [meta["cpu_probe_ms_before"], meta["cpu_probe_ms_after"]]
    print(
        "Host steadiness: a fixed Python loop took "
        + " and ".join(probe_text(p) for p in probes)
        + " of CPU over 30 back-to-back runs, before and after the benchmark.\n"
    )
    if fanout:
        print("## Fan-out\n")
        print(fanout_tables(fanout, args) + "\n")
    if slow:
        print("## Slow client\n")
        print(slow_table(slow, args) + "\n")
    print(f"raw results: {out.relative_to(REPO_DIR)}")
