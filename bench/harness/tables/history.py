"""``history.py``'s tables and targets: history on vs off (one process; three processes +
Redis; Redis per publish), and the recovery storm."""

from __future__ import annotations

import argparse
import math
from typing import Any

from harness.report import fmt, fmt_ratio
from harness.stats import median, ratio

__all__ = ["tables", "target_rows", "targets_table"]

TARGET_ON_VS_OFF = 1.05
TARGET_STORM_S = 10.0
ON, OFF = "history-on", "history-off"


def _one_process(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "One process, one room: `roomcast serve` (history on, the default) beside `roomcast serve "
        "--history-size 0`, rounds alternating (server CPU per delivered message, median over "
        "rounds, (min-max)).",
        "",
        "| N | history | single µs/msg | burst µs/msg | lost | KiB/conn | handshake CPU ms/conn "
        "| per-round single µs/msg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        singles = ", ".join(f"{p['single']['us_per_msg']:.2f}" for p in r["rounds"])
        lines.append(
            f"| {r['connections']} | {'off' if r['server'].endswith('-0') else 'on'} "
            f"| **{r['single_us']:.2f}** ({r['single_us_range'][0]:.2f}-"
            f"{r['single_us_range'][1]:.2f}) | {r['burst_us']:.2f} | {r['lost']} "
            f"| {r['kib_per_conn']:.1f} | {r['handshake_cpu_ms']:.3f} | {singles} |"
        )
    return lines


def one_process_ratios(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per N: on ÷ off of the medians, and the median of the per-round ratios."""
    out: dict[int, dict[str, Any]] = {}
    for n in sorted({r["connections"] for r in rows}):
        pair = [r for r in rows if r["connections"] == n]
        on = next((r for r in pair if not r["server"].endswith("-0")), None)
        off = next((r for r in pair if r["server"].endswith("-0")), None)
        if on is None or off is None:
            continue
        rounds = [
            ratio(a["single"]["us_per_msg"], b["single"]["us_per_msg"])
            for a, b in zip(on["rounds"], off["rounds"], strict=False)
        ]
        out[n] = {
            "single": ratio(on["single_us"], off["single_us"]),
            "single_rounds": median(rounds),
            "single_rounds_range": [min(rounds, default=math.nan), max(rounds, default=math.nan)],
            "burst": ratio(on["burst_us"], off["burst_us"]),
            "handshake": ratio(on["handshake_cpu_ms"], off["handshake_cpu_ms"]),
            "kib_per_conn": ratio(on["kib_per_conn"], off["kib_per_conn"]),
        }
    return out


def _cluster(c: dict[str, Any], args: argparse.Namespace) -> list[str]:
    n = c["connect"][ON]["connections"]
    lines = [
        f"Three processes + a redis-server each, {n:,} clients per deployment (a third per "
        f"process), both deployments up at once; {args.cluster_rounds} rounds of "
        f"{args.cluster_step} broadcasts each, alternating (one `POST /api/publish` to "
        "instance 0, the others get it through Redis).",
        "",
        "| deployment | connected | connect s | handshake CPU ms/conn | server CPU µs/msg "
        "(min-max) | redis CPU ms/broadcast | client µs/msg | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in (ON, OFF):
        k, s = c["connect"][name], c[name]
        lines.append(
            f"| {name} | {k['connected']:,} | {k['connect_s']:.1f} | {k['handshake_cpu_ms']:.3f} "
            f"| **{s['us_per_msg']:.2f}** ({s['us_per_msg_range'][0]:.2f}-"
            f"{s['us_per_msg_range'][1]:.2f}) | {s['redis_ms_per_broadcast']:.2f} "
            f"| {s['client_us_per_msg']:.2f} | {s['lost']} |"
        )
    ratios = ", ".join(fmt_ratio(x) for x in c["round_ratios"])
    lines += ["", f"on ÷ off, round by round: {ratios}."]
    return lines


def _redis(rate: dict[str, Any]) -> list[str]:
    lines = [
        "redis-server CPU per publish: three processes + a redis-server per deployment, "
        f"{rate[ON]['clients']} clients each, publishes through instance 0's API port one "
        "after the other (each answered before the next), the deployments taking turns by "
        "blocks. History on: one EVALSHA of the publish script (HINCRBY, HGET, XADD MAXLEN, "
        "XTRIM MINID, 2 PEXPIRE, PUBLISH); off: one PUBLISH.",
        "",
        "| deployment | publishes | redis µs/publish | net of idle | per block (min-max) "
        "| server CPU µs/publish (3 summed) | ms per answered publish | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in (ON, OFF):
        r = rate[name]
        lines.append(
            f"| {name} | {r['publishes']:,} | {r['redis_us_per_publish']:.1f} "
            f"| **{r['redis_net_us_per_publish']:.1f}** | {min(r['redis_block_us']):.1f}-"
            f"{max(r['redis_block_us']):.1f} | {r['server_us_per_publish']:.0f} "
            f"| {r['publish_ms']:.2f} | {r['lost']} |"
        )
    lines.append("")
    for name in (ON, OFF):
        per = rate[name]["commands_per_publish"]
        text = ", ".join(f"{k} {v:.2f}" for k, v in per.items() if v >= 0.005)
        lines.append(f"- {name}: Redis commands per publish (`INFO commandstats`): {text}")
    return lines


def _storm(s: dict[str, Any]) -> list[str]:
    lines = [
        f"Recovery storm: {s['clients']:,} clients over three processes + Redis, one room; "
        f"{s['live']['messages']} messages live, then every socket cut (RST) while "
        f"{s['cut']['messages']} are published through the three API ports in turn, then "
        "every client back on the next server with `since`.",
        "",
        "| phase | connected | acked | recovered / not | replayed | last ack s "
        "| ack p50 / p99 ms | handshake p99 ms | server CPU ms/client | redis CPU µs/client "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, key in (("first connect + join", "connect"), ("reconnect + recover", "storm")):
        p = s[key]
        lines.append(
            f"| {label} | {p['connected']:,} | {p['acked']:,} | {p['recovered']:,} / "
            f"{p['not_recovered']:,} | {p['replayed']:,} | **{p['last_ack_s']:.2f}** "
            f"| {fmt(p['ack_ms']['p50'])} / {fmt(p['ack_ms']['p99'])} "
            f"| {fmt(p['handshake_ms']['p99'])} | {p['server_cpu_ms_per_client']:.3f} "
            f"| {p['redis_cpu_us_per_client']:.1f} | {p['errors']} |"
        )
    c, cut = s["check"], s["cut"]
    for label, key in (("first connect + join", "connect"), ("reconnect + recover", "storm")):
        calls = ", ".join(f"{k} {v:,}" for k, v in s[key].get("redis_commands", {}).items())
        lines += ["", f"- {label}: Redis commands (`INFO commandstats`): {calls}"]
    lines += [
        "",
        f"Cut: {cut['cut']:,} sockets; the {cut['messages']} publishes took "
        f"{cut['publish_s']:.2f} s; the room ended at {cut['position']}.",
        "",
        "| check | value |",
        "|---|---|",
        f"| messages each client should have | {c['expected_per_client']} |",
        f"| received (all clients) | {c['received']:,} |",
        f"| lost (missing offsets, all clients) | **{c['lost']}** |",
        f"| duplicated | **{c['duplicates']}** |",
        f"| clients short / with duplicates / whose epoch changed | {c['members_short']} / "
        f"{c['members_doubled']} / {c['members_epoch_changed']} |",
        f"| offset - seq (one value: one position per publish) | {c['drift']} |",
        f"| connections dropped by the servers | {c['dropped']} |",
    ]
    lines += [f"| example | {e} |" for e in c["examples"]]
    return lines


def tables(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines: list[str] = []
    if results.get("one_process"):
        lines += [*_one_process(results["one_process"]), ""]
        ratios = one_process_ratios(results["one_process"])
        lines += [
            "| N | single on ÷ off (medians) | paired rounds: median (min-max) | burst on ÷ off "
            "| handshake CPU on ÷ off | KiB/conn on ÷ off |",
            "|---|---|---|---|---|---|",
        ]
        for n, r in ratios.items():
            lines.append(
                f"| {n} | **{fmt_ratio(r['single'])}** | {fmt_ratio(r['single_rounds'])} "
                f"({fmt_ratio(r['single_rounds_range'][0])}-"
                f"{fmt_ratio(r['single_rounds_range'][1])}) | {fmt_ratio(r['burst'])} "
                f"| {fmt_ratio(r['handshake'])} | {fmt_ratio(r['kib_per_conn'])} |"
            )
        lines.append("")
    if "redis" in results:
        lines += [*_redis(results["redis"]["rate"]), ""]
    if "cluster" in results:
        lines += [*_cluster(results["cluster"], args), ""]
    if "storm" in results:
        lines += _storm(results["storm"])
    return "\n".join(lines)


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float, met: bool, detail: str) -> None:
        rows.append({"target": name, "value": value, "met": met, "detail": detail})

    limit = f"<= {TARGET_ON_VS_OFF}x"
    for n, r in one_process_ratios(results.get("one_process", [])).items():
        value = r["single"]
        row(f"one process, N={n}: CPU/msg on ÷ off {limit}", value, value <= TARGET_ON_VS_OFF, "")
    if "cluster" in results:
        c = results["cluster"]
        value = ratio(c[ON]["us_per_msg"], c[OFF]["us_per_msg"])
        row(
            f"3 processes + Redis: CPU/msg on ÷ off {limit}",
            value,
            value <= TARGET_ON_VS_OFF,
            f"{c[ON]['us_per_msg']:.2f} ÷ {c[OFF]['us_per_msg']:.2f} µs",
        )
    if "redis" in results:
        rate = results["redis"]["rate"]
        on, off = rate[ON]["redis_net_us_per_publish"], rate[OFF]["redis_net_us_per_publish"]
        row(
            "redis CPU per publish on ÷ off (no target)",
            ratio(on, off),
            True,
            f"{on:.1f} ÷ {off:.1f} µs",
        )
    if "storm" in results:
        s = results["storm"]
        value = s["storm"]["last_ack_s"]
        every = s["storm"]["recovered"] == s["clients"]
        row(
            f"storm: last recovered ack <= {TARGET_STORM_S:g} s, every client recovered",
            value,
            value <= TARGET_STORM_S and every,
            f"{s['storm']['recovered']:,} of {s['clients']:,} recovered",
        )
        check = s["check"]
        row("storm: lost == 0", check["lost"], check["lost"] == 0, "")
        row("storm: duplicated == 0", check["duplicates"], check["duplicates"] == 0, "")
    return rows


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | value | measured | met |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['value']:.2f} | {r['detail']} "
            f"| {'yes' if r['met'] else '**no**'} |"
        )
    return "\n".join(lines)
