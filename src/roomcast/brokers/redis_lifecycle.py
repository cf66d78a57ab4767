"""Lifecycle events, cluster-wide and at least once: the rules of ``LifecycleState`` in Redis.

Every instance of a hub feeds its connections' changes to a ``RedisLifecycle``; Lua scripts
(``roomcast.brokers.redis_lifecycle_scripts``) apply them to cluster-wide counts and write
the events to a Redis Stream in the same atomic step, so an event is never lost between a
count and the outbox, and a consumer in any language reads them with XREADGROUP
(``roomcast.brokers.redis_outbox``).  Keys (prefix ``ws``; one hash tag, so a Redis Cluster
keeps them on one node and accepts the scripts)::

    {ws:life}:counts     hash  subject -> instances holding it (user:U, member:R\\0U, room:R)
    {ws:life}:i:<id>     hash  the subjects instance <id> holds, and '#': its last batch
    {ws:life}:alive      zset  instance -> when its liveness expires (ms, Redis' clock)
    {ws:life}:due        zset  departures waiting for the debounce window, by when due
    {ws:life}:pending    hash  their details
    {ws:life}:seqs       hash  last seq per user:U / room:R;  {ws:life}:idle  zset  idle ones
    {ws:life}:meta       hash  epoch and count of event ids, order of the due scores
    {ws:life}:events     stream, field ``e`` = the event's JSON (``LifecycleEvent.as_dict``)
    {ws:life}:purging:<id>  lock of the survivor purging dead instance <id>

Cost: only an instance's first arrival / last departure of a subject goes to Redis (a user's
second tab on the same instance costs nothing); changes are batched, one EVALSHA per batch of
up to ``batch`` changes; one more EVALSHA per ``refresh_interval`` refreshes the liveness,
emits due departures (any instance may: each waiting entry is emitted once) and lists dead
instances.  A dead instance (its liveness expired) is purged by a survivor in chunks: its
subjects are subtracted and those reaching zero depart, as ``synthetic`` events with reason
"instance lost", code 1006, after the same window (a user who reconnected elsewhere emits
nothing).  An instance that finds its part gone (purged while alive after a stall, or Redis
restarted empty) rewrites it from memory: what it still holds arrives again.

Differences from ``LifecycleState``: the clock is Redis' (``TIME``), departures come out on
the next tick after their window (up to ``refresh_interval`` late), an event's ``instance``
is the instance where its cause happened (for synthetic events: the dead one), and a change
dropped from a full queue is repaired by a rewrite whose events carry no connection.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from roomcast.brokers.lifecycle_holdings import Holdings
from roomcast.brokers.lifecycle_stats import LifecycleStats, Sample
from roomcast.brokers.redis_lifecycle_scripts import APPLY, PURGE, RESTORE, TICK, lifecycle_keys
from roomcast.events.lifecycle import Change
from roomcast.tasks import TaskSet

__all__ = ["LifecycleStats", "RedisLifecycle", "Sample", "lifecycle_keys"]

logger = logging.getLogger("roomcast.events.redis")

_CHUNK = 500
"""Subjects per restore or purge step (each step is one script call)."""
_STEP = 1000
"""Most due departures (or idle sequence subjects) one tick handles."""
_RETRYABLE = (RedisError, OSError, TimeoutError)


class RedisLifecycle:
    """One instance's feed of lifecycle changes into the cluster-wide store.

    Args:
        redis: A ``redis.asyncio.Redis`` (or ``RedisCluster``) client.
        instance_id: This instance's id (unique among live instances).
        prefix: Key prefix.
        debounce: Seconds a departure waits for a comeback (0: at once).
        instance_ttl: Seconds this instance counts as alive without a refresh.
        refresh_interval: Seconds between ticks (liveness, due departures, dead instances).
        max_events: The stream's approximate length limit (MAXLEN ~): older events go.
        queue_limit: Changes waiting for Redis at most; more are dropped and counted.
        batch: Changes per script call at most.
        call_timeout: Seconds one script call may take.
    """

    def __init__(
        self,
        redis: Any,
        instance_id: str,
        *,
        prefix: str = "ws",
        debounce: float = 5.0,
        instance_ttl: float = 15.0,
        refresh_interval: float = 0.5,
        max_events: int = 100_000,
        queue_limit: int = 100_000,
        batch: int = 500,
        call_timeout: float = 5.0,
    ) -> None:
        if refresh_interval >= instance_ttl:
            raise ValueError("refresh_interval must be shorter than instance_ttl")
        self._redis: Any = redis
        self.instance_id = instance_id
        self.keys = lifecycle_keys(prefix)
        self._mine = f"{self.keys['base']}:i:{instance_id}"
        self._shared = [self.keys[name] for name in _SHARED]
        self._debounce_us = round(debounce * 1_000_000)
        self._ttl_ms = round(instance_ttl * 1000)
        self._refresh_interval = refresh_interval
        self._max_events = max_events
        self._queue_limit = queue_limit
        self._batch = batch
        self._call_timeout = call_timeout
        self._epoch = os.urandom(4).hex()
        self._holdings = Holdings()
        self._queue: collections.deque[tuple[Change, str, str]] = collections.deque()
        """Changes to write: the change, its op code (``Holdings.record``), its data's JSON."""
        self._in_flight: tuple[int, int] | None = None  # (batch number, changes)
        self._batches = 0
        self._applied = 0  # the last batch Redis applied
        self._restore_reason: str | None = None  # set: rewrite this instance's part first
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tasks = TaskSet()
        self.stats = LifecycleStats()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Take over this instance id's part (what a previous process with this id left
        departs) and start the writer and the ticker.  Redis away: the writer takes over
        when it returns (changes queue meanwhile), as a hub serves its clients without it."""
        try:
            await self._restore("instance restarted")
        except _RETRYABLE as exc:
            logger.warning("lifecycle: Redis unreachable at start (%s); retrying", exc)
            self._drained.clear()
        self._tasks.spawn(self._write_loop(), name="roomcast-lifecycle-writer")
        self._tasks.spawn(self._tick_loop(), name="roomcast-lifecycle-ticker")

    async def stop(self, *, retire: bool = True, within: float = 5.0) -> None:
        """Write what is queued (for up to ``within`` seconds) and stop.

        With ``retire``, what this instance still holds departs now (reason "instance
        stopped") and it leaves the instance list; without, its part stays for a survivor to
        purge after ``instance_ttl`` (what a crash leaves).
        """
        if retire:
            await self.flush(within)
        await self._tasks.cancel_all()
        if retire:
            try:
                await self._rewrite(set(), "instance stopped", "retire")
            except _RETRYABLE as exc:
                logger.warning("could not retire this instance's lifecycle state: %s", exc)

    def record(self, change: Change) -> None:
        """Note ``change`` now; it is written in the next batch.  Never blocks: when the
        queue is full the change is dropped and counted, and this instance's part is
        rewritten from memory once the queue has room again."""
        self.stats.recorded += 1
        code = self._holdings.record(change)
        if code is None:
            return
        data = ""
        if change.data is not None and code in "cp":
            try:
                data = json.dumps(change.data, separators=(",", ":"), ensure_ascii=False)
            except (TypeError, ValueError) as exc:  # the event goes without it
                logger.warning("lifecycle: %s data is not JSON: %s", change.op.value, exc)
        if len(self._queue) >= self._queue_limit:
            self.stats.dropped += 1
            if code != "p":
                self._restore_reason = self._restore_reason or "not recorded"
                self._drained.clear()
                self._wake.set()
            return
        self._queue.append((change, code, data))
        self._drained.clear()
        self._wake.set()

    async def flush(self, within: float = 5.0) -> bool:
        """Wait up to ``within`` seconds for every recorded change to be written."""
        try:
            async with asyncio.timeout(within):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    def samples(self) -> list[Sample]:
        """The stats as metric samples (``roomcast.serve.metrics.Sample``)."""
        return self.stats.samples(self.queued)

    # ---------------------------------------------------------------- the writer

    async def _write_loop(self) -> None:
        failures = 0
        while True:
            if not self._queue and self._restore_reason is None:
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if self._restore_reason is not None:
                    await self._restore(self._restore_reason)
                else:
                    await self._write_batch()
                failures = 0
            except _RETRYABLE as exc:
                failures += 1
                self.stats.errors += 1
                logger.warning("lifecycle write failed (%d in a row): %s", failures, exc)
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))
            except Exception:  # a bug or an unexpected reply: log, and do not spin
                failures += 1
                self.stats.errors += 1
                logger.exception("lifecycle write failed")
                await asyncio.sleep(2.0)

    async def _write_batch(self) -> None:
        """Apply the oldest queued changes in one script call.  A batch keeps its number
        until Redis acknowledged it, so a retry after a lost reply is not applied twice."""
        if self._in_flight is None:
            self._batches += 1
            self._in_flight = (self._batches, min(self._batch, len(self._queue)))
        number, size = self._in_flight
        args: list[Any] = [number]
        for index in range(size):
            change, code, data = self._queue[index]
            args += [
                code,
                change.connection,
                change.user or "",
                change.room or "",
                change.reason or "",
                "" if change.code is None else int(change.code),  # (a CloseCode: its number)
                data,
            ]
        status, events = await self._call(APPLY, self._mine, args)
        if status == -1:  # this instance's part is gone: rewrite it, then send the batch again
            self._restore_reason = "instance restored"
            return
        for _ in range(size):
            self._queue.popleft()
        self._in_flight = None
        self._applied = number
        self.stats.written += size
        self.stats.events += events

    async def _restore(self, reason: str) -> None:
        """Make this instance's part in Redis what its memory says (before the queue)."""
        self._restore_reason = reason
        queued = ((change, code) for change, code, _ in self._queue)
        await self._rewrite(self._holdings.target(queued), reason, "held")
        self._restore_reason = None
        self.stats.restores += 1
        logger.info("lifecycle: rewrote this instance's part in Redis (%s)", reason)

    async def _rewrite(self, target: set[str], reason: str, finish: str) -> None:
        found = set()
        async with asyncio.timeout(self._call_timeout):
            async for raw in self._redis.hscan_iter(self._mine, count=1000):
                found.add(raw[0].decode() if isinstance(raw[0], bytes) else raw[0])
        found.discard("#")
        # Every held subject is sent, not only the missing ones: a purge may still have
        # taken some between the scan and the first call (which stops it).
        gone = sorted(found - target, key=_rank)
        held = sorted(target, key=_rank, reverse=True)
        pairs = [(s, "0") for s in gone] + [(s, "1") for s in held]
        while True:
            chunk, pairs = pairs[:_CHUNK], pairs[_CHUNK:]
            args = [self._ttl_ms, "" if pairs else finish, self._applied, reason]
            args += [item for pair in chunk for item in pair]
            events, _ = await self._call(RESTORE, self._mine, args)
            self.stats.events += events
            if not pairs:
                return

    # ---------------------------------------------------------------- the ticker

    async def _tick_loop(self) -> None:
        while True:
            more = False
            try:
                more = await self.tick()
            except _RETRYABLE as exc:
                self.stats.errors += 1
                logger.warning("lifecycle tick failed: %s", exc)
            except Exception:  # a bug or an unexpected reply: keep ticking
                self.stats.errors += 1
                logger.exception("lifecycle tick failed")
            await asyncio.sleep(0 if more else self._refresh_interval)

    async def tick(self) -> bool:
        """Refresh this instance's liveness, emit due departures, purge dead instances.

        Returns:
            Whether more departures are due already (call again at once).
        """
        held, events, more, *dead = await self._call(TICK, self._mine, [self._ttl_ms, _STEP])
        self.stats.events += events
        if not held and self._restore_reason is None:
            self._restore_reason = "instance restored"
            self._drained.clear()
            self._wake.set()
        for instance in dead:
            name = instance.decode() if isinstance(instance, bytes) else str(instance)
            if name != self.instance_id:
                await self.purge(name)
        return bool(more)

    async def purge(self, instance: str) -> bool:
        """Subtract a dead instance's part from the counts, in chunks (its subjects that
        reach zero depart, as synthetic events).  False if it is alive after all, or
        another survivor is purging it, or it was purged already."""
        base = self.keys["base"]
        keys = [f"{base}:i:{instance}", f"{base}:purging:{instance}"]
        phase, cursor = 0, "0"
        while True:
            reply = await self._call(PURGE, keys, [instance, phase, cursor, _CHUNK])
            status, phase, cursor, departures = reply
            status = status.decode() if isinstance(status, bytes) else str(status)
            self.stats.synthetic += departures
            if status != "more":
                break
            cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if status == "done":
            self.stats.purges += 1
            logger.info("lifecycle: purged dead instance %s", instance)
        return status == "done"

    # ---------------------------------------------------------------- calls

    async def _call(self, script: str, keys: str | Sequence[str], args: list[Any]) -> Any:
        """Run ``script`` by its SHA (loading it if Redis does not know it)."""
        names = [*self._shared, *([keys] if isinstance(keys, str) else keys)]
        common = [self._max_events, self._debounce_us, self._epoch, self.instance_id]
        self.stats.script_calls += 1
        async with asyncio.timeout(self._call_timeout):
            try:
                return await self._redis.evalsha(_SHAS[script], len(names), *names, *common, *args)
            except NoScriptError:
                return await self._redis.eval(script, len(names), *names, *common, *args)


def _rank(subject: str) -> int:
    """Departures go members, rooms, users (a leave before its disconnect); arrivals the
    other way round."""
    return ("member:", "room:", "user:").index(subject[: subject.index(":") + 1])


_SHARED = ("counts", "due", "pending", "seqs", "idle", "meta", "events", "alive")
_SHAS = {
    script: hashlib.sha1(script.encode()).hexdigest() for script in (APPLY, TICK, PURGE, RESTORE)
}
