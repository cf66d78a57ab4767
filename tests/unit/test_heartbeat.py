"""Heartbeats: the pure schedule with a fake clock, then HeartbeatManager on a real loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roomcast import HeartbeatManager, PingMessage, WSMessage
from roomcast.heartbeat import HeartbeatSchedule
from tests.support import eventually, seconds


def test_a_silent_connection_is_pinged_then_declared_dead() -> None:
    """Timeline (interval 30, timeout 60): pings at 30 and 60, dead at 90."""
    schedule = HeartbeatSchedule(30, 60, resolution=1)
    schedule.add("c", 0)
    assert schedule.due(29) == ([], [])
    assert schedule.due(30) == (["c"], [])
    assert schedule.due(59) == ([], [])
    assert schedule.due(60) == (["c"], [])
    assert schedule.alive("c", 89.9)
    assert schedule.due(89) == ([], [])
    assert schedule.due(90) == ([], ["c"])
    assert "c" not in schedule and len(schedule) == 0
    assert schedule.next_event() is None


def test_a_pong_resets_the_deadline_and_measures_the_round_trip() -> None:
    """A pong counts as life: the deadline moves to pong + interval + timeout; its RTT is the
    time since the last ping."""
    schedule = HeartbeatSchedule(30, 60, resolution=1)
    schedule.add("c", 0)
    assert schedule.pong("c", 10) is None  # no ping outstanding: no RTT
    assert schedule.due(30) == (["c"], [])
    assert schedule.pong("c", 30.25) == pytest.approx(0.25)
    assert schedule.due(90) == (["c"], [])  # the ping due at 60, late...
    assert schedule.due(120) == (["c"], [])  # ...and the one due at 90 (no catch-up burst)
    assert schedule.alive("c", 120.2)
    assert not schedule.alive("c", 120.25 + 0.1)
    assert schedule.due(121) == ([], ["c"])
    assert schedule.pong("gone", 1) is None


def test_missed_counts_unanswered_pings_but_not_one_still_in_time() -> None:
    """missed = pings since the last pong, minus the newest while within pong_timeout."""
    schedule = HeartbeatSchedule(10, 15, resolution=1)
    schedule.add("c", 0)
    schedule.due(10)
    found = schedule.health("c", 11)
    assert found is not None and found[2] == 0
    schedule.due(20)
    found = schedule.health("c", 21)
    assert found is not None and found[1] and found[2] == 1
    assert schedule.health("other", 1) is None


def test_many_connections_are_bucketed_by_due_time() -> None:
    """Connections added at different times are pinged at their own times; a tick with
    nothing due returns nothing."""
    schedule = HeartbeatSchedule(5, 5, resolution=0.5)
    for n in range(1000):
        schedule.add(f"c{n}", n * 0.01)  # over 10 s
    assert schedule.due(4.9) == ([], [])
    pinged, dead = schedule.due(5.5)
    assert dead == [] and len(pinged) == 51  # added at 0.00-0.50
    assert schedule.remove("c999") and not schedule.remove("c999")
    assert len(schedule) == 999
    with pytest.raises(ValueError):
        HeartbeatSchedule(0, 1, resolution=1)


def test_adding_again_restarts_the_clock() -> None:
    """start_heartbeat twice for one id starts over instead of duplicating it."""
    schedule = HeartbeatSchedule(10, 10, resolution=1)
    schedule.add("c", 0)
    schedule.add("c", 5)
    assert schedule.due(10) == ([], [])
    assert schedule.due(15) == (["c"], [])


class FakeWebSocket:
    """Records what the default (application-level) ping sends."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(text)


async def test_manager_pings_and_reports_the_silent_one_only() -> None:
    """Seed API: two connections, one answers its pings and stays; the other is reported
    through its callback within ping_interval + pong_timeout, and forgotten."""
    interval = seconds(0.2)
    heartbeat = HeartbeatManager(ping_interval=interval, pong_timeout=interval)
    talker, silent = FakeWebSocket(), FakeWebSocket()
    lost: list[str] = []

    async def handle_disconnect(connection_id: str) -> None:
        lost.append(connection_id)

    heartbeat.start_heartbeat(connection_id="talker", websocket=talker)
    heartbeat.start_heartbeat(
        connection_id="silent", websocket=silent, on_disconnect_callback=handle_disconnect
    )
    try:
        began = asyncio.get_running_loop().time()

        async def answer() -> None:
            while True:
                await asyncio.sleep(interval / 4)
                if talker.sent:
                    heartbeat.record_pong("talker")

        answering = asyncio.ensure_future(answer())
        await eventually(lambda: lost == ["silent"], timeout_units=5)
        elapsed = asyncio.get_running_loop().time() - began
        assert elapsed >= 2 * interval
        answering.cancel()
        assert isinstance(WSMessage.from_json(silent.sent[0]), PingMessage)
        assert heartbeat.is_connection_alive("talker")
        assert not heartbeat.is_connection_alive("silent")
        metrics = heartbeat.get_all_health_metrics()
        assert list(metrics) == ["talker"]
        assert metrics["talker"].alive and metrics["talker"].rtt is not None
        assert metrics["talker"].last_pong is not None and metrics["talker"].missed == 0
        assert heartbeat.stop_heartbeat("talker") and heartbeat.watched == 0
    finally:
        await heartbeat.close()


async def test_failing_sends_and_callbacks_do_not_stop_the_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ping sender or a callback that raises is logged; the timer goes on."""
    interval = seconds(0.05)
    calls: list[str] = []

    def broken_sender(connection_id: str, websocket: Any, message: PingMessage) -> None:
        calls.append(connection_id)
        raise RuntimeError("socket gone")

    def broken_callback(connection_id: str) -> None:
        raise RuntimeError("callback bug")

    heartbeat = HeartbeatManager(interval, interval, send_ping=broken_sender)
    heartbeat.start_heartbeat("a", None, broken_callback)
    heartbeat.start_heartbeat("b", None)
    try:
        await eventually(lambda: heartbeat.watched == 0, timeout_units=5)
        assert "a" in calls and "b" in calls
        assert "callback bug" in caplog.text or "callback for a failed" in caplog.text
    finally:
        await heartbeat.close()


def test_late_ticks_do_not_make_the_interval_drift() -> None:
    """Pings stay on start + k * interval when the timer wakes a little after each bucket,
    as a real loop does (the lateness used to add up: 5 s pings went out every 5.5 s)."""
    schedule = HeartbeatSchedule(5, 5, resolution=0.5)
    schedule.add("c", 0.2)
    for k in range(1, 21):
        wake = schedule.next_event()
        assert wake is not None
        now = wake + 0.001
        assert schedule.due(now) == (["c"], [])
        schedule.pong("c", now)
        assert 0 <= now - (0.2 + 5 * k) < 0.5 + 0.002
