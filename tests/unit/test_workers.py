"""``WorkerView``: the other workers' snapshots, and the whole server's /metrics and /readyz
from them (no Redis, a fake clock)."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from roomcast.serve.options import OptionError
from roomcast.serve.workers import MAX_SNAPSHOT_BYTES, WorkerIdentity, WorkerView


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def registry(connections: float, messages: float) -> CollectorRegistry:
    """A worker's registry: an unlabelled gauge, a counter, and a labelled gauge."""
    registry = CollectorRegistry()
    Gauge("roomcast_connections", "Open WebSocket connections.", registry=registry).set(connections)
    Counter("roomcast_messages_in", "Messages received.", registry=registry).inc(messages)
    rooms = Gauge("roomcast_room_members", "Members.", ["room"], registry=registry)
    rooms.labels(room="lobby").set(connections)
    return registry


def view(slot: int = 0, count: int = 3) -> tuple[WorkerView, Clock]:
    clock = Clock()
    return WorkerView(WorkerIdentity(slot, count, "g"), stale_after=5.0, clock=clock), clock


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text, by name and sorted labels (parsed as Prometheus
    would: a text it cannot parse fails here)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_every_worker_is_in_one_scrape_each_sample_labelled() -> None:
    """Own samples live, the others' from their snapshots: HELP and TYPE once per family,
    labels kept, ``worker`` added, ``_total`` where Prometheus puts it, and who reported."""
    me, _ = view(slot=1)
    me.received(0, me.snapshot(registry(3, 10), None))
    me.received(2, me.snapshot(registry(4, 20), None))
    text = me.render(registry(5, 30))
    found = samples(text)
    assert found[("roomcast_connections", (("worker", "0"),))] == 3
    assert found[("roomcast_connections", (("worker", "1"),))] == 5
    assert found[("roomcast_connections", (("worker", "2"),))] == 4
    assert found[("roomcast_messages_in_total", (("worker", "2"),))] == 20
    assert found[("roomcast_room_members", (("room", "lobby"), ("worker", "0")))] == 3
    assert found[("roomcast_worker_up", (("worker", "0"),))] == 1
    assert text.count(b"# TYPE roomcast_messages_in_total counter\n") == 1
    assert text.count(b"# HELP roomcast_connections ") == 1
    assert sum(v for (name, _), v in found.items() if name == "roomcast_connections") == 12


def test_a_worker_that_stops_reporting_leaves_scrapes_and_readiness() -> None:
    """A snapshot counts for ``stale_after`` seconds from its reading; then its worker is
    reported down (``roomcast_worker_up`` 0) and /readyz names it.  A key gone from Redis
    drops the worker at once."""
    me, clock = view(slot=0, count=3)
    assert me.others == [1, 2]
    assert me.unready() == "worker 1 not reporting"
    me.received(1, me.snapshot(registry(1, 1), None))
    me.received(2, me.snapshot(registry(2, 2), None))
    assert me.unready() is None
    clock.now += 4
    me.received(2, me.snapshot(registry(2, 2), None))
    clock.now += 2  # worker 1's snapshot is 6 s old, worker 2's 2 s
    assert me.unready() == "worker 1 not reporting"
    found = samples(me.render(registry(0, 0)))
    assert found[("roomcast_worker_up", (("worker", "1"),))] == 0
    assert ("roomcast_connections", (("worker", "1"),)) not in found
    assert found[("roomcast_connections", (("worker", "2"),))] == 2
    me.received(2, None)
    assert ("roomcast_connections", (("worker", "2"),)) not in samples(me.render(registry(0, 0)))


def test_readiness_is_every_workers() -> None:
    """A worker whose snapshot says it is not ready makes the whole server not ready, and
    the answer says which and why."""
    me, _ = view(slot=0, count=2)
    me.received(1, me.snapshot(registry(0, 0), "broker unavailable"))
    assert me.unready() == "worker 1 not ready: broker unavailable"
    me.received(1, me.snapshot(registry(0, 0), None))
    assert me.unready() is None


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"unready": 3, "families": []}',
        b'{"unready": null}',
        b'{"unready": null, "families": [["bad name", "gauge", "h", []]]}',
        b'{"unready": null, "families": [["m", "nonsense", "h", []]]}',
        b'{"unready": null, "families": [["m", "gauge", 7, []]]}',
        b'{"unready": null, "families": [["m", "gauge", "h", [["m x", {}, 1]]]]}',
        b'{"unready": null, "families": [["m", "gauge", "h", [["m", {"a b": "1"}, 1]]]]}',
        b'{"unready": null, "families": [["m", "gauge", "h", [["m", [], 1]]]]}',
        b'{"unready": null, "families": [["m", "gauge", "h", [["m", {}, "x"]]]]}',
        b'{"unready": null, "families": [["m", "gauge", "h", [[5, {}, 1]]]]}',
        b'{"unready": null, "families": []}' + b" " * MAX_SNAPSHOT_BYTES,
    ],
)
def test_a_snapshot_that_does_not_parse_is_counted_and_ignored(payload: bytes) -> None:
    """Whatever is found under a worker's key, a scrape stays valid Prometheus text: a
    snapshot that is not one (or is too large) counts as a failure and as no snapshot."""
    me, _ = view(slot=0, count=2)
    me.received(1, me.snapshot(registry(1, 1), None))
    me.received(1, payload)
    assert me.sync_failures == 1
    assert me.unready() == "worker 1 not reporting"
    samples(me.render(registry(0, 0)))


def test_a_family_of_another_type_elsewhere_is_left_out() -> None:
    """Mid-upgrade, two workers may give one name different types: the first one's is
    rendered, so the text stays valid."""
    me, _ = view(slot=0, count=2)
    other = {"unready": None, "families": [["roomcast_connections", "counter", "h", []]]}
    me.received(1, json.dumps(other).encode())
    text = me.render(registry(2, 0))
    assert b"# TYPE roomcast_connections gauge" in text
    assert samples(text)[("roomcast_worker_up", (("worker", "1"),))] == 1


def test_a_long_reason_is_cut() -> None:
    """A reason is one line of /readyz, not whatever another process wrote."""
    me, _ = view(slot=0, count=2)
    me.received(1, json.dumps({"unready": "x" * 1000, "families": []}).encode())
    assert me.unready() == "worker 1 not ready: " + "x" * 200


def test_the_identity_comes_from_the_supervisors_variables() -> None:
    """None without them (a hand-run worker answers for itself); refused if malformed."""
    assert WorkerIdentity.from_environment({}) is None
    assert WorkerIdentity.from_environment({"ROOMCAST_WORKER_SLOT": "1"}) is None
    good = {
        "ROOMCAST_WORKER_SLOT": "1",
        "ROOMCAST_WORKER_COUNT": "2",
        "ROOMCAST_WORKER_GROUP": "9-ab",
    }
    assert WorkerIdentity.from_environment(good) == WorkerIdentity(1, 2, "9-ab")
    for name, value in [
        ("ROOMCAST_WORKER_SLOT", "2"),
        ("ROOMCAST_WORKER_SLOT", "-1"),
        ("ROOMCAST_WORKER_COUNT", "x"),
        ("ROOMCAST_WORKER_GROUP", ""),
    ]:
        with pytest.raises(OptionError, match="leave them unset"):
            WorkerIdentity.from_environment({**good, name: value})
