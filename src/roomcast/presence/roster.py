"""Who is in which room, across the instances of a hub: a lean roster in Redis.

``roomcast serve`` needs one cluster-wide answer, "the members of room R", and it needs it
cheaply: a hub takes thousands of connects a second.  So the roster keeps no record per
connection, only one set per (room, instance) (prefix ``ws``)::

    ws:roster:room:{instance}:{room}   set of JSON [connection_id, user_id]; TTL
    ws:roster:rooms:{instance}         the rooms with members on that instance; TTL
    ws:roster:alive:{instance}         liveness key, TTL instance_ttl
    ws:roster:instances                set of instance ids

A join is one SADD and a leave one SREM (batched by the caller); one loop per instance
refreshes its liveness key and the TTLs of its rooms' sets, which costs per room, not per
connection.  A reader takes the union of the room's sets of the instances that are alive, so
a dead instance's members drop out of every answer as soon as its liveness key expires; a
survivor then reports them to ``on_departed`` (the ``left`` events) and deletes its keys, and
even with no survivor every key expires on its own.

The instance keeps its own members in memory (``record``, at the moment they change), so its
part in Redis can always be rebuilt: after a write failed or was dropped (Redis away, a full
queue), and after the instance was taken for dead and purged (a stall longer than the
liveness TTL), the next refresh rewrites it whole, and ``on_restored`` re-announces the
members that were reported gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from roomcast.tasks import TaskSet

__all__ = ["Departed", "Member", "RoomRoster", "RosterChange"]

logger = logging.getLogger("roomcast.presence.roster")

Member = tuple[str, str | None]
"""(connection id, user id)."""
Departed = Callable[[str, list[Member]], None]
"""Called with a room and members: a dead instance's (``on_departed``), or this instance's
own after it was purged and rewrote its part (``on_restored``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RosterChange:
    """One connection joining (``joined``) or leaving a room, to be written in a batch."""

    joined: bool
    room: str
    connection_id: str
    user_id: str | None


class RoomRoster:
    """This instance's part of the cluster-wide roster, and the cluster-wide reads.

    Args:
        redis: A ``redis.asyncio.Redis`` client.
        instance_id: This instance's id.
        prefix: Key prefix (the hub's channel prefix).
        instance_ttl: Seconds this instance's liveness key lives without a refresh.
        refresh_interval: Seconds between refreshes (well under ``instance_ttl``).
        on_departed: Told about the members of a dead instance, room by room, once purged.
        on_restored: Told about this instance's members, room by room, when it finds it was
            purged while alive and has written them back.
    """

    def __init__(
        self,
        redis: Any,
        instance_id: str,
        *,
        prefix: str = "ws",
        instance_ttl: float = 15.0,
        refresh_interval: float = 5.0,
        on_departed: Departed | None = None,
        on_restored: Departed | None = None,
    ) -> None:
        if refresh_interval >= instance_ttl:
            raise ValueError("refresh_interval must be shorter than instance_ttl")
        self._redis: Any = redis
        self.instance_id = instance_id
        self._keys = f"{prefix}:roster"
        self._instance_ttl = instance_ttl
        self._key_ttl = int(instance_ttl * 4)
        self._refresh_interval = refresh_interval
        self._on_departed = on_departed
        self._on_restored = on_restored
        self._members: dict[str, set[str]] = {}  # room -> this instance's members (JSON)
        self._written: set[str] = set()  # rooms whose set (and rooms entry) Redis has
        self._dirty = False  # Redis may differ from _members: rewrite at the next refresh
        self._announced = False
        self._tasks = TaskSet()
        self.purged = 0
        """Members of dead instances this instance purged."""

    def _room(self, instance: str, room: str) -> str:
        return f"{self._keys}:room:{instance}:{room}"

    def _rooms(self, instance: str) -> str:
        return f"{self._keys}:rooms:{instance}"

    def _alive(self, instance: str) -> str:
        return f"{self._keys}:alive:{instance}"

    @property
    def _instances(self) -> str:
        return f"{self._keys}:instances"

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Announce this instance and start the refresh loop."""
        await self._announce()
        self._tasks.spawn(self._run(), name="roomcast-roster")

    async def stop(self) -> None:
        """Stop refreshing and remove this instance's keys."""
        await self._tasks.cancel_all()
        try:
            await self._delete_instance(self.instance_id, [*self._members, *self._written])
        except Exception as exc:  # Redis away: the keys expire by themselves
            logger.warning("could not remove the roster of this instance: %s", exc)

    # ---------------------------------------------------------------- writes

    def record(self, change: RosterChange) -> None:
        """Note a change in memory, now; ``apply`` writes it to Redis later."""
        member = json.dumps([change.connection_id, change.user_id])
        if change.joined:
            self._members.setdefault(change.room, set()).add(member)
            return
        members = self._members.get(change.room)
        if members is not None:
            members.discard(member)
            if not members:
                del self._members[change.room]

    def mark_dirty(self) -> None:
        """A recorded change will not be applied (dropped): rewrite at the next refresh."""
        self._dirty = True

    async def apply(self, changes: Iterable[RosterChange]) -> None:
        """Write a batch of recorded joins and leaves, in order, in one round trip."""
        redis = self._redis
        mine = self._rooms(self.instance_id)
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for change in changes:
                    member = json.dumps([change.connection_id, change.user_id])
                    key = self._room(self.instance_id, change.room)
                    if change.joined:
                        pipe.sadd(key, member)
                        if change.room not in self._written:  # the room is new here
                            self._written.add(change.room)
                            pipe.expire(key, self._key_ttl)
                            pipe.sadd(mine, change.room)
                            pipe.expire(mine, self._key_ttl)
                    else:
                        pipe.srem(key, member)
                        if change.room not in self._members and change.room in self._written:
                            self._written.discard(change.room)
                            pipe.srem(mine, change.room)
                if len(pipe):
                    await pipe.execute()
        except BaseException:
            self._dirty = True
            raise

    async def _rewrite(self) -> None:
        """Replace this instance's part in Redis with what it has in memory."""
        redis = self._redis
        members = {room: set(found) for room, found in self._members.items()}
        mine = self._rooms(self.instance_id)
        async with redis.pipeline(transaction=True) as pipe:
            for room in self._written | members.keys():
                pipe.delete(self._room(self.instance_id, room))
            pipe.delete(mine)
            for room, found in members.items():
                key = self._room(self.instance_id, room)
                pipe.sadd(key, *found)
                pipe.expire(key, self._key_ttl)
                pipe.sadd(mine, room)
            pipe.expire(mine, self._key_ttl)
            await pipe.execute()
        self._written = set(members)
        logger.info("rewrote the roster of this instance (%d rooms)", len(members))

    # ---------------------------------------------------------------- reads

    async def members(self, room: str) -> list[Member]:
        """Every member of ``room`` on every live instance, by user id (anonymous last)."""
        redis = self._redis
        instances = sorted(_text(i) for i in await redis.smembers(self._instances))
        if not instances:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for instance in instances:
                pipe.exists(self._alive(instance))
                pipe.smembers(self._room(instance, room))
            answers = await pipe.execute()
        found: set[Member] = set()
        for alive, members in zip(answers[::2], answers[1::2], strict=True):
            if alive:
                found.update(_member(m) for m in members)
        return sorted(found, key=lambda member: (member[1] is None, member[1] or "", member[0]))

    # ---------------------------------------------------------------- the loop

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self._announce()
                await self.purge_dead()
            except Exception as exc:  # Redis away: try again next round
                logger.warning("roster refresh failed: %s", exc)

    async def _announce(self) -> None:
        """Refresh the liveness key and the TTLs of this instance's keys (per room); rewrite
        this instance's part if it may be wrong, or if it was purged for dead meanwhile."""
        redis = self._redis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(self._alive(self.instance_id), "1", px=int(self._instance_ttl * 1000))
            pipe.sadd(self._instances, self.instance_id)
            pipe.expire(self._rooms(self.instance_id), self._key_ttl)
            for room in self._written:
                pipe.expire(self._room(self.instance_id, room), self._key_ttl)
            answers = await pipe.execute()
        purged = self._announced and answers[1] == 1  # another instance took us for dead
        self._announced = True
        if purged or self._dirty:
            self._dirty = False
            try:
                await self._rewrite()
            except BaseException:
                self._dirty = True
                raise
        if purged and self._on_restored is not None:
            for room, found in list(self._members.items()):
                self._on_restored(room, sorted(_member(m) for m in found))

    async def purge_dead(self) -> int:
        """Report and delete the members of instances whose liveness key expired."""
        redis = self._redis
        purged = 0
        for instance in [_text(i) for i in await redis.smembers(self._instances)]:
            if instance == self.instance_id or await redis.exists(self._alive(instance)):
                continue
            lock = f"{self._keys}:purging:{instance}"
            if not await redis.set(lock, self.instance_id, nx=True, ex=60):
                continue  # another survivor is on it
            try:
                if await redis.exists(self._alive(instance)):
                    continue  # it refreshed while we took the lock: alive after all
                rooms = [_text(r) for r in await redis.smembers(self._rooms(instance))]
                for room in rooms:
                    members = [_member(m) for m in await redis.smembers(self._room(instance, room))]
                    purged += len(members)
                    if members and self._on_departed is not None:
                        try:
                            self._on_departed(room, members)
                        except Exception:
                            logger.exception("on_departed callback failed")
                await self._delete_instance(instance, rooms)
                logger.info("purged %d members of dead instance %s", purged, instance)
            finally:
                await redis.delete(lock)
        self.purged += purged
        return purged

    async def _delete_instance(self, instance: str, rooms: list[str]) -> None:
        redis = self._redis
        async with redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.delete(self._room(instance, room))
            pipe.delete(self._rooms(instance), self._alive(instance))
            pipe.srem(self._instances, instance)
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _member(raw: bytes | str) -> Member:
    connection_id, user_id = json.loads(raw)
    return str(connection_id), None if user_id is None else str(user_id)
