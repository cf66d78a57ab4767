"""What one worker of ``roomcast serve --workers N`` knows of the others: their metrics and
readiness, so that any worker answers ``/metrics`` and ``/readyz`` for the whole server.

The kernel hands each scrape to whichever worker SO_REUSEPORT picks; answering for that worker
alone would make every scrape a different, partial server.  So each worker publishes a
snapshot (its metric families and its readiness) through the Redis the workers share, about
once a second, and keeps the others' latest snapshots here (``worker_sync`` does the I/O).
``/metrics`` then renders every worker's samples, each labelled ``worker="N"`` (its own live,
the others at most a few seconds old), and ``/readyz`` is ready only if every worker's fresh
snapshot says so.  A GET is answered synchronously inside picows' upgrade callback, which
cannot wait for Redis: hence this cache.

Nothing here does I/O; the clock is a parameter, so tests need neither Redis nor sleeps.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from roomcast.serve.options import OptionError
from roomcast.serve.supervisor import (
    WORKER_COUNT_VARIABLE,
    WORKER_GROUP_VARIABLE,
    WORKER_SLOT_VARIABLE,
)

__all__ = ["MAX_SNAPSHOT_BYTES", "SNAPSHOT_LIFETIME", "WorkerIdentity", "WorkerView"]

SNAPSHOT_LIFETIME = 5.0
"""Seconds a worker's snapshot counts, in Redis (its key's expiry) and in the others' caches:
long enough to ride out a busy second or two, short enough that a stuck worker soon makes
``/readyz`` fail."""

MAX_SNAPSHOT_BYTES = 256 * 1024
"""A snapshot larger than this is ignored (ours are a few kilobytes): a bound on what one
worker's cache may hold per other worker, whatever is found in Redis."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

_Sample = tuple[str, dict[str, str], float]
_Family = tuple[str, str, str, list[_Sample]]
"""``(name, type, documentation, samples)`` of one metric family, as a snapshot carries it."""


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Which worker this process is, of how many, in which supervisor's group.

    The group id is new for each supervisor, so the snapshots of a server that was stopped
    (or of another server on the same Redis) are never taken for this one's.
    """

    slot: int
    count: int
    group: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> WorkerIdentity | None:
        """The identity the supervisor put in a worker's environment; None if it put none
        (a hand-run ``serve --worker``), which answers for this process alone.

        Raises:
            OptionError: the variables are there but do not describe a worker.
        """
        names = (WORKER_SLOT_VARIABLE, WORKER_COUNT_VARIABLE, WORKER_GROUP_VARIABLE)
        if not all(name in environ for name in names):
            return None
        slot, count, group = (environ[name] for name in names)
        if not (slot.isdigit() and count.isdigit() and 0 <= int(slot) < int(count) and group):
            raise OptionError(
                f"{WORKER_SLOT_VARIABLE}={slot!r}, {WORKER_COUNT_VARIABLE}={count!r} and "
                f"{WORKER_GROUP_VARIABLE}={group!r} do not name a worker; they are set by "
                "roomcast serve --workers, leave them unset"
            )
        return cls(int(slot), int(count), group)


@dataclasses.dataclass(frozen=True, slots=True)
class _Snapshot:
    families: list[_Family]
    unready: str | None
    received_at: float


class WorkerView:
    """The latest snapshot of every other worker, and the whole server's answers from them.

    Args:
        identity: This worker.
        stale_after: Seconds after which a snapshot no longer counts (its worker is then
            missing from ``/metrics`` and makes ``/readyz`` fail).
        clock: Monotonic seconds (a test passes its own).
    """

    def __init__(
        self,
        identity: WorkerIdentity,
        stale_after: float = SNAPSHOT_LIFETIME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self._stale_after = stale_after
        self._clock = clock
        self._others: dict[int, _Snapshot] = {}
        self.sync_failures = 0
        """Exchanges with Redis that failed, and snapshots found there that did not parse."""

    @property
    def others(self) -> list[int]:
        """The other workers' slots."""
        return [slot for slot in range(self.identity.count) if slot != self.identity.slot]

    def snapshot(self, registry: CollectorRegistry, unready: str | None) -> bytes:
        """This worker's snapshot: its metric families now, and why it is not ready (None:
        ready)."""
        families = [
            [m.name, m.type, m.documentation, [[s.name, s.labels, s.value] for s in m.samples]]
            for m in registry.collect()
        ]
        return json.dumps({"unready": unready, "families": families}).encode()

    def received(self, slot: int, payload: bytes | None) -> None:
        """What Redis holds for ``slot`` now (None: nothing, its worker has not written for a
        while).  A snapshot that does not parse counts as a failure and as nothing."""
        if payload is None:
            self._others.pop(slot, None)
            return
        snapshot = _parse(payload, self._clock()) if len(payload) <= MAX_SNAPSHOT_BYTES else None
        if snapshot is None:
            self.sync_failures += 1
            self._others.pop(slot, None)
        else:
            self._others[slot] = snapshot

    def _fresh(self) -> dict[int, _Snapshot]:
        now = self._clock()
        return {
            slot: snapshot
            for slot, snapshot in self._others.items()
            if now - snapshot.received_at <= self._stale_after
        }

    def unready(self) -> str | None:
        """Why the whole server is not ready, as far as the other workers go (None: they all
        are): the first worker with no fresh snapshot, or whose snapshot says not ready."""
        fresh = self._fresh()
        for slot in self.others:
            snapshot = fresh.get(slot)
            if snapshot is None:
                return f"worker {slot} not reporting"
            if snapshot.unready is not None:
                return f"worker {slot} not ready: {snapshot.unready}"
        return None

    def render(self, registry: CollectorRegistry) -> bytes:
        """The Prometheus text of every worker: each family's HELP and TYPE once, then each
        worker's samples with ``worker="N"`` added to their labels; and ``roomcast_worker_up``,
        1 for each worker whose samples are in this answer, 0 for the others."""
        own: list[_Family] = [
            (m.name, m.type, m.documentation, [(s.name, s.labels, s.value) for s in m.samples])
            for m in registry.collect()
        ]
        fresh = self._fresh()
        sources = [(self.identity.slot, own)]
        sources += [(slot, fresh[slot].families) for slot in sorted(fresh)]
        merged: dict[str, Metric] = {}
        for slot, families in sources:
            for name, kind, documentation, samples in families:
                metric = merged.get(name)
                if metric is None:
                    metric = merged[name] = Metric(name, documentation, kind)
                elif metric.type != kind:
                    continue  # (another version of roomcast, mid-upgrade: keep the text valid)
                for sample_name, labels, value in samples:
                    metric.add_sample(sample_name, {**labels, "worker": str(slot)}, value)
        up = Metric("roomcast_worker_up", "1 for each worker whose figures are here.", "gauge")
        reporting = {slot for slot, _ in sources}
        for slot in range(self.identity.count):
            up.add_sample("roomcast_worker_up", {"worker": str(slot)}, int(slot in reporting))
        return generate_latest(_fixed([*merged.values(), up]))


class _Metrics(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def _fixed(metrics: list[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Metrics(metrics))
    return registry


def _parse(payload: bytes, now: float) -> _Snapshot | None:
    """A snapshot from another worker, checked field by field (None: it does not parse)."""
    try:
        data = json.loads(payload)
        unready = data["unready"]
        families = [_family(item) for item in data["families"]]
    except (ValueError, KeyError, TypeError, AttributeError):  # (json's: ValueError)
        return None
    if unready is not None and not isinstance(unready, str):
        return None
    return _Snapshot(families, unready[:200] if unready else unready, now)


def _family(item: Any) -> _Family:
    """One family of a snapshot, its names checked against Prometheus' classic syntax.

    Raises:
        ValueError, TypeError: it is not one.
    """
    name, kind, documentation, samples = item
    if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
        raise ValueError("not a metric name")
    if not isinstance(documentation, str):
        raise TypeError("not a family")
    kind = Metric(name, documentation, kind).type  # (ValueError for a type it does not know)
    checked: list[_Sample] = []
    for sample_name, labels, value in samples:
        if not isinstance(sample_name, str) or not _METRIC_NAME.fullmatch(sample_name):
            raise ValueError("not a sample name")
        checked.append((sample_name, _labels(labels), float(value)))
    return name, kind, documentation, checked


def _labels(labels: Any) -> dict[str, str]:
    checked = {str(key): str(value) for key, value in labels.items()}
    if not all(_LABEL_NAME.fullmatch(key) for key in checked):
        raise ValueError("not a label name")
    return checked
