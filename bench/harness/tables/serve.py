"""``serve.py``'s tables: every server at every N, roomcast serve against raw picows and
python-socketio, the marginal cost per delivery, the cyclic-GC variants, the details."""

from __future__ import annotations

import argparse
from typing import Any

from harness.deployment import BURST
from harness.report import fmt, fmt_ratio
from harness.stats import linear_fit, median, ratio

__all__ = ["marginal_fit", "tables"]


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
