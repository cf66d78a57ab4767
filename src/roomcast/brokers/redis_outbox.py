"""The Redis Stream outbox: lifecycle events read back with a consumer group.

``RedisLifecycle``'s scripts append every event to one stream, ``{ws:life}:events`` (prefix
``ws``), as one field ``e`` holding the event's JSON object, exactly
``LifecycleEvent.as_dict()``::

    {"type":"disconnect","id":"3f9a01c2-1842","time":1765058400.123456,"seq":1765058400123000,
     "user":"alice","connection":"c7","reason":"closed","code":1001,"instance":"web-2"}

``id`` is ``<epoch>-<n>``: ``n`` counts the events of the store and ``epoch`` is drawn when
the store is new (so ids stay unique if Redis restarts empty); it is the same on every
redelivery, so a consumer deduplicates by it.  Any language consumes the stream the same way
this class does::

    XGROUP CREATE {ws:life}:events webhooks 0 MKSTREAM
    XREADGROUP GROUP webhooks <consumer> COUNT 100 BLOCK 1000 STREAMS {ws:life}:events >
    XACK {ws:life}:events webhooks <entry id> ...
    XAUTOCLAIM {ws:life}:events webhooks <consumer> 30000 0-0 COUNT 100   (a dead reader's)

The stream is capped (``MAXLEN ~ max_events``): when readers fall that far behind, the
oldest entries are trimmed whether read or not.  ``dropped`` counts the ones this group had
not read yet (the stream's ``entries-added`` minus its length, beyond the group's
``entries-read``, sampled before each read) and the claimed-but-unacknowledged ones trimmed
before they were acknowledged (XAUTOCLAIM reports them).  Acknowledged entries are left in
the stream for other groups unless ``delete_acked`` (then XDEL too).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from roomcast.brokers.redis_lifecycle_scripts import lifecycle_keys
from roomcast.events.schema import LifecycleEvent

__all__ = ["RedisStreamOutbox"]

logger = logging.getLogger("roomcast.events.redis")

_MAX_BLOCK = 5.0
"""Seconds one XREADGROUP may block at most (a longer ``wait`` is cut to this)."""


class RedisStreamOutbox:
    """An ``roomcast.events.outbox.Outbox`` over the lifecycle stream.

    Args:
        redis: A ``redis.asyncio.Redis`` (or ``RedisCluster``) client; its socket timeout
            must exceed the longest wait (5 s).
        prefix: The ``RedisLifecycle``'s key prefix.
        group: The consumer group (one per kind of consumer: each group sees every event).
        consumer: This reader's name in the group (the instance id).
        reclaim_after: Seconds after which an entry claimed and not acknowledged is handed
            out again (to any reader of the group).
        delete_acked: Delete acknowledged entries (only when this group is the one reader).
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "ws",
        group: str = "webhooks",
        consumer: str,
        reclaim_after: float = 30.0,
        delete_acked: bool = False,
    ) -> None:
        self._redis: Any = redis
        self.stream = lifecycle_keys(prefix)["events"]
        self.group = group
        self.consumer = consumer
        self._reclaim_ms = round(reclaim_after * 1000)
        self._delete_acked = delete_acked
        self._ready = False
        self._cursor = "0-0"  # where XAUTOCLAIM goes on
        self._backlog = 0
        self._dropped = 0
        self.undecodable = 0
        """Entries that were not events (acknowledged and skipped)."""

    @property
    def backlog(self) -> int:
        return self._backlog

    @property
    def dropped(self) -> int:
        return self._dropped

    async def claim(self, count: int, wait: float) -> list[tuple[str, LifecycleEvent]]:
        """Entries idle longer than ``reclaim_after`` first (a dead reader's), then new ones,
        waiting up to ``wait`` seconds (at most 5) for the first."""
        async with asyncio.timeout(wait + 10.0):
            await self._ensure_group()
            try:
                return await self._claim(count, wait)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ready = False  # Redis restarted empty: the group is gone
                await self._ensure_group()
                return await self._claim(count, wait)

    async def refresh(self) -> None:
        """Read ``backlog`` and ``dropped`` now (two XINFO calls).  A claim refreshes them
        too; a reader that claims nothing for a while (its dispatcher retrying one batch while
        the receiver is down) calls this so that the backlog it shows still moves."""
        async with asyncio.timeout(10.0):
            await self._ensure_group()
            await self._sample()

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        async with asyncio.timeout(10.0):
            await self._redis.xack(self.stream, self.group, *entry_ids)
            if self._delete_acked:
                await self._redis.xdel(self.stream, *entry_ids)
            self._backlog = max(0, self._backlog - len(entry_ids))

    async def _ensure_group(self) -> None:
        if self._ready:
            return
        try:
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._ready = True

    async def _claim(self, count: int, wait: float) -> list[tuple[str, LifecycleEvent]]:
        redis = self._redis
        reply = await redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self._reclaim_ms,
            start_id=self._cursor,
            count=count,
        )
        self._cursor = _text(reply[0])
        if len(reply) > 2:  # pending entries trimmed before anyone acknowledged them
            self._dropped += len(reply[2])
        entries = list(reply[1])
        if len(entries) < count:
            await self._sample()
            block = max(1, round(min(wait, _MAX_BLOCK) * 1000))
            answer = await redis.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=count - len(entries),
                block=block,
            )
            for _, found in answer or ():
                entries += found
        return await self._decode(entries)

    async def _sample(self) -> None:
        """Count entries trimmed before this group read them; refresh the backlog."""
        stream = await self._redis.xinfo_stream(self.stream)
        groups = await self._redis.xinfo_groups(self.stream)
        mine = next((g for g in groups if _text(g["name"]) == self.group), None)
        if mine is None:
            return
        added, length = int(stream["entries-added"]), int(stream["length"])
        read = mine.get("entries-read")
        pending = int(mine["pending"])
        if read is None and _text(mine["last-delivered-id"]) == "0-0":
            read = 0  # nothing read yet (Redis leaves the counter unset on a trimmed stream)
        if read is None:
            self._backlog = pending + int(mine.get("lag") or 0)
            return
        trimmed = added - length
        self._dropped += max(0, trimmed - int(read))
        self._backlog = pending + max(0, added - max(int(read), trimmed))

    async def _decode(self, entries: list[Any]) -> list[tuple[str, LifecycleEvent]]:
        out: list[tuple[str, LifecycleEvent]] = []
        bad: list[str] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted meanwhile (Redis < 7 reports it so)
                continue
            key = _text(entry_id)
            try:
                raw = fields.get(b"e", fields.get("e"))
                out.append((key, LifecycleEvent.from_dict(json.loads(raw))))
            except (ValueError, TypeError):
                logger.warning("skipping stream entry %s: not a lifecycle event", key)
                bad.append(key)
        if bad:
            self.undecodable += len(bad)
            await self.ack(bad)
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
