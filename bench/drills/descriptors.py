"""Descriptors: the server under ``RLIMIT_NOFILE`` 1,024 (soft and hard, set before exec) with
``--max-connections`` 18,000, then 900; 1,500 upgrades at once from four addresses."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from drills.base import CROWD, PROBE, Case, Run, Serve
from harness.raw_http import HealthProbe, health_check, status_of
from harness.raw_ws import upgrade_request
from harness.report import fmt_counts, log

__all__ = ["drill_descriptors"]


async def upgrade_once(port: int, source: str) -> tuple[str, asyncio.StreamWriter | None]:
    """Ask for an upgrade; the answer's status, or how it failed; the writer if 101."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 20
        )
    except (OSError, TimeoutError):
        return "connect failed", None
    writer.write(upgrade_request(port, "/ws"))
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        writer.transport.abort()
        return "closed without an answer", None
    except TimeoutError:
        writer.transport.abort()
        return "no answer in 20 s", None
    status = str(status_of(head))
    if status != "101":
        writer.transport.abort()
        return status, None
    return status, writer


async def descriptors_case(run: Run, max_connections: int) -> Case:
    serve = Serve(
        run, f"nofile-{max_connections}", ("--max-connections", str(max_connections)), nofile=1024
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        await serve.ready()
        assert serve.api_port is not None
        await asyncio.sleep(0.5)  # let start-up warnings reach the log
        start_metrics = await serve.metrics()
        started = time.monotonic()
        results = await asyncio.gather(
            *(upgrade_once(serve.port, CROWD[n % len(CROWD)]) for n in range(1500))
        )
        burst_seconds = time.monotonic() - started
        writers = [writer for _, writer in results if writer is not None]
        # Probed after the burst, not during it: a probe's socket taken during the burst would
        # hold one of the last descriptors for the probe itself.
        ws_health = HealthProbe(serve.port, source=PROBE)
        api_health = HealthProbe(serve.api_port, source=PROBE)
        await asyncio.sleep(3.0)  # the admitted clients stay connected meanwhile
        health_during = f"WS port {await ws_health.stop()}; API port {await api_health.stop()}"
        # Ten admitted clients leave: is the port still taking new ones?
        for writer in writers[:10]:
            writer.transport.abort()
        writers = writers[10:]
        await asyncio.sleep(1.0)
        late, late_writer = await upgrade_once(serve.port, PROBE)
        if late_writer is not None:
            writers.append(late_writer)
        after = (
            f"a new upgrade: {late}; /healthz WS port "
            f"{await health_check(serve.port, source=PROBE)}, "
            f"API port {await health_check(serve.api_port, source=PROBE)}"
        )
        try:
            end_metrics = await serve.metrics()
        except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
            end_metrics = {}
            after += f"; /metrics failed ({type(exc).__name__})"
        warnings = [line.strip() for line in serve.log().splitlines() if "open-file limit" in line]
        cap = start_metrics.get("roomcast_max_connections")
        served = end_metrics.get("roomcast_connections", float("nan"))
        errors = end_metrics.get("roomcast_accept_errors_total")
        return Case(
            f"RLIMIT_NOFILE 1,024, --max-connections {max_connections:,}",
            {
                "start-up warning": ("yes: " + warnings[0][warnings[0].find("the open-file") :])
                if warnings
                else "none",
                "admitted cap (roomcast_max_connections)": "not exposed"
                if cap is None
                else f"{cap:,.0f}",
                "1,500 upgrades at once": fmt_counts(Counter(status for status, _ in results))
                + f" (in {burst_seconds:.1f} s)",
                "/healthz in the 3 s after the burst, admitted clients connected "
                "(every 0.5 s, 1 s timeout)": health_during,
                "once 10 admitted clients left": after,
                "connections then (roomcast_connections)": f"{served:,.0f}",
                "roomcast_accept_errors_total": "not exposed"
                if errors is None
                else f"{errors:,.0f}",
            },
        )
    finally:
        for writer in writers:
            writer.transport.abort()
        await serve.stop()


async def drill_descriptors(run: Run) -> list[Case]:
    cases = []
    for max_connections in (18_000, 900):
        log(f"descriptors: --max-connections {max_connections}")
        cases.append(await descriptors_case(run, max_connections))
    return cases
