"""``scaleout.py``'s tables: the connects and the broadcasts of every deployment, beside the
python-socketio + Redis reference figures."""

from __future__ import annotations

import argparse
from typing import Any

from harness.cluster import INSTANCES, KINDS
from harness.report import fmt

__all__ = ["REFERENCE_SOCKETIO", "tables"]

REFERENCE_SOCKETIO = {"us_per_msg": 128.0, "p100_ms": 4800.0, "connections": 45_000}
"""python-socketio + AsyncRedisManager over 3 uvicorn processes on this kind of machine: the
reference printed beside the measured figures."""


def tables(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"N = {args.connections:,} clients over {INSTANCES} server processes (a third each), "
        f"{args.messages} single broadcasts per deployment after {args.warmup} not counted, "
        f"each sent {args.gap_ms:g} ms after the previous one reached every client; frames of "
        f"~{args.frame_size} B.",
        "",
        "| deployment | connected | connect s | failed | handshake p99 ms | handshake CPU "
        "ms/conn | redis CPU s during connects | server RSS MiB (3 summed) | KiB/conn "
        "| KiB/conn added |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        paced = f" (paced over {r['connect_spread_s']:g} s)" if r["connect_spread_s"] else ""
        has_redis = KINDS[r["deployment"]].redis
        redis_connect = f"{r['redis_connect_cpu_s']:.2f}" if has_redis else "-"
        lines.append(
            f"| {r['deployment']} | {r['connected']:,} | {r['connect_s']:.1f}{paced} "
            f"| {r['connect_failures']} | {fmt(r['handshake_ms']['p99'])} "
            f"| {r['handshake_cpu_ms']:.3f} | {redis_connect} | {r['rss_after_kib'] / 1024:.0f} "
            f"| {r['kib_per_conn']:.1f} | {r['kib_per_conn_added']:.1f} |"
        )
    lines += [
        "",
        "| deployment | delivery p50 / p99 / p100 ms | worst p100 ms | lost | server CPU µs/msg "
        "| net of idle µs/msg | server CPU ms/broadcast | redis CPU ms/broadcast "
        "| idle server CPU % | client CPU µs/msg | GC passes 0/1/2 (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        b = r.get("broadcasts")
        if b is None:
            continue
        redis = f"{b['redis_ms_per_broadcast']:.2f}" if KINDS[r["deployment"]].redis else "-"
        gc = (
            "/".join(str(x) for x in b["gc_collections"]) + f" ({b['gc_s']:.2f} s)"
            if "gc_collections" in b
            else "-"
        )
        lines.append(
            f"| {r['deployment']} | {fmt(r['p50_ms'])} / {fmt(r['p99_ms'])} / "
            f"{fmt(r['p100_ms'])} | {fmt(r['p100_worst_ms'])} | {r['lost']} "
            f"| {r['us_per_msg']:.2f} | {r['net_us_per_msg']:.2f} "
            f"| {b['server_ms_per_broadcast']:.1f} | {redis} "
            f"| {r['idle']['server_cpu_pct']:.1f} | {b['client_us_per_msg']:.2f} | {gc} |"
        )
    lines += [
        "",
        f"Reference (python-socketio + Redis, 3 uvicorn processes, "
        f"{REFERENCE_SOCKETIO['connections']:,} clients): "
        f"{REFERENCE_SOCKETIO['us_per_msg']:g} µs server CPU per delivered message, "
        f"{REFERENCE_SOCKETIO['p100_ms'] / 1000:g} s until all had a broadcast.",
    ]
    return "\n".join(lines)
