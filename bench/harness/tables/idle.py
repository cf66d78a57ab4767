"""``idle.py``'s tables: the heartbeat servers over the idle windows, and the registry's
Redis load (registration, refresh loops, clean stop)."""

from __future__ import annotations

import argparse
from typing import Any

from harness.report import spread

__all__ = ["REFERENCE_IDLE", "heartbeat_tables", "registry_tables"]

REFERENCE_IDLE = "uvicorn's default 20 s keepalive pings: ~4 % of a core at 15k idle connections"


def heartbeat_tables(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    n = args.connections
    lines = [
        f"Heartbeat: {len(results)} `roomcast serve` processes up at the same time, each with "
        f"{n:,} idle picows clients (auto-pong on); {args.windows} idle windows of "
        f"{args.window:g} s, the same windows for every server.",
        "",
        "| heartbeat | server flags | clients (during windows) | heartbeat timeouts "
        "| server CPU % of a core | µs CPU / conn / s | on - off: % of a core "
        "| on - off: µs / conn / s | µs per ping + pong |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        conns = "/".join(f"{c:,}" for c in r["connections_seen"])
        cells = [
            r["variant"],
            f"`{r['flags']}`",
            conns,
            str(r["heartbeat_timeouts"]),
            f"{r['server_cpu_pct']:.2f} ({spread(r['server_cpu_pct_per_window'])})",
            f"{r['us_per_conn_s']:.3f}",
        ]
        if r["ping_interval"] and "cpu_pct_minus_off" in r:
            cells += [
                f"{r['cpu_pct_minus_off']:+.2f}",
                f"{r['us_per_conn_s_minus_off']:+.3f}",
                f"{r['us_per_ping']:.1f}",
            ]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| heartbeat | pings/s (N ÷ interval) | pongs/s measured (server reads) "
        "| effective interval s | per-window server CPU % "
        "| RSS MiB | KiB/conn | client CPU % of a core | client µs / conn / s "
        "| client disconnects | connect s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        reads = r["server_reads_per_s"]
        effective = f"{r['connected'] / reads:.2f}" if r["ping_interval"] and reads else "-"
        lines.append(
            f"| {r['variant']} | {r['pings_per_s_expected']:,.0f} "
            f"| {r['server_reads_per_s']:,.0f} | {effective} "
            f"| {', '.join(f'{x:.2f}' for x in r['server_cpu_pct_per_window'])} "
            f"| {r['rss_after_kib'] / 1024:.1f} "
            f"| {r['kib_per_conn']:.2f} | {r['client_cpu_pct']:.2f} "
            f"| {r['client_us_per_conn_s']:.3f} | {r['client_disconnects']} "
            f"| {r['connect_s']:.1f} |"
        )
    lines += ["", f"Reference: {REFERENCE_IDLE}."]
    return "\n".join(lines)


def _by_name(counts: dict[str, float], digits: int = 0, top: int = 6) -> str:
    items = list(counts.items())[:top]
    text = ", ".join(f"{k} {v:,.{digits}f}" for k, v in items)
    return text + (", …" if len(counts) > top else "")


def registry_tables(r: dict[str, Any]) -> str:
    d = r["defaults"]
    reg = r["register"]
    mem = r["memory"]
    lines = [
        f"Registry: {r['registries']} `PresenceRegistry` instances (one `redis.asyncio.Redis` "
        f"each, one Python process), {r['connections']:,} connections in all, "
        f"{r['connections_per_user']} per user ({r['users']:,} users), each in one room of "
        f"{r['room_size']} ({r['rooms']:,} rooms); connection_ttl={d['connection_ttl']}, "
        f"instance_ttl={d['instance_ttl']:g}, refresh_interval={d['refresh_interval']:g} "
        "(ConnectionConfig's defaults).",
        "",
        "| one-off: register | seconds | commands | of them inside the add script "
        "| by command | redis CPU s | keys | used_memory MiB (dataset) "
        "| bytes / connection (dataset) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['connections']:,} x add + join | {reg['elapsed_s']:.1f} "
        f"| {reg['commandstats_total']:,} | {reg['in_add_script']:,} "
        f"| {_by_name(reg['commands_by_name'])} | {reg['redis_cpu_s']:.2f} | {mem['keys']:,} "
        f"| {mem['used_mib']:.1f} ({mem['dataset_mib']:.1f}) "
        f"| {mem['bytes_per_conn']:.0f} ({mem['dataset_bytes_per_conn']:.0f}) |",
        "",
        "| refresh loop | rounds per instance | window s | commands/s | by command (/s) "
        "| commands per round (all instances) | redis CPU % of a core "
        "| refresh s per instance (median / max) | registry process CPU % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in r["refresh"]:
        lines.append(
            f"| {w['label']} | {'/'.join(str(x) for x in w['rounds_per_registry'])} "
            f"| {w['elapsed_s']:.1f} | {w['commands_per_s']:,.0f} "
            f"| {_by_name(w['by_name_per_s'])} | {w['commands_per_round']:,.0f} "
            f"| {w['redis_cpu_pct']:.2f} "
            f"| {w['refresh_wall_s']['median']:.2f} / {w['refresh_wall_s']['max']:.2f} "
            f"| {w['own_cpu_pct']:.1f} |"
        )
    stop = r.get("clean_stop")
    if stop:
        lines += [
            "",
            "| clean stop of one instance | seconds | commands | by command | redis CPU s |",
            "|---|---|---|---|---|",
            f"| {stop['connections']:,} connections | {stop['elapsed_s']:.1f} "
            f"| {stop['commandstats_total']:,} | {_by_name(stop['commands_by_name'])} "
            f"| {stop['redis_cpu_s']:.2f} |",
        ]
    return "\n".join(lines)
