"""A cluster-wide connection registry in Redis, kept alive by TTLs.

Every instance writes down its connections so that any instance can answer "who is in this
room", "is this user online", "how many connections" for the whole cluster, and enforce a
per-user connection cap.  Keys (prefix ``ws``)::

    ws:presence:conn:{cid}          hash: user, instance, rooms (JSON), connected_at; TTL
    ws:presence:user:{uid}          set of connection ids; TTL
    ws:presence:room:{room}         set of connection ids; TTL
    ws:presence:instance:{iid}      set of this instance's connection ids; TTL
    ws:presence:alive:{iid}         liveness key, TTL instance_ttl
    ws:presence:instances           set of instance ids

One loop per instance refreshes its liveness key and the TTLs of its records (pipelined, in
batches), and looks for instances whose liveness key is gone.  A dead instance's records are
purged by whichever survivor takes the purge lock first; it removes them from the user and
room sets and reports each purged connection to ``on_stale`` (the leave/disconnect events).
Even with no survivor at all, every record expires on its own after ``connection_ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from roomcast.tasks import TaskSet

__all__ = ["PresenceRegistry", "StaleConnection"]

logger = logging.getLogger("roomcast.presence.connection_registry")

# Add a connection to a user's set unless the user is at the cap; 1 if added, 0 if refused.
_CAPPED_ADD = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


@dataclasses.dataclass(frozen=True, slots=True)
class StaleConnection:
    """A connection of a dead instance, purged from the registry."""

    connection_id: str
    user_id: str | None
    rooms: tuple[str, ...]
    instance: str


StaleCallback = Callable[[StaleConnection], Awaitable[None] | None]


class PresenceRegistry:
    """This instance's view of, and contribution to, the cluster's connection registry.

    Args:
        redis: A ``redis.asyncio.Redis`` client (its pool bounds the connections used).
        instance_id: This instance's id (hex).
        prefix: Key prefix.
        connection_ttl: Seconds a record lives without a refresh.
        instance_ttl: Seconds this instance's liveness key lives without a refresh; an
            instance whose key is gone is dead and gets purged.
        refresh_interval: Seconds between refreshes (well under both TTLs).
        on_stale: Called for every connection purged from a dead instance.
    """

    def __init__(
        self,
        redis: Any,
        instance_id: str,
        *,
        prefix: str = "ws",
        connection_ttl: int = 3600,
        instance_ttl: float = 30.0,
        refresh_interval: float = 10.0,
        on_stale: StaleCallback | None = None,
    ) -> None:
        if refresh_interval >= instance_ttl:
            raise ValueError("refresh_interval must be shorter than instance_ttl")
        self._redis = redis
        self.instance_id = instance_id
        self._keys = f"{prefix}:presence"
        self._connection_ttl = int(connection_ttl)
        self._instance_ttl = instance_ttl
        self._refresh_interval = refresh_interval
        self._on_stale = on_stale
        self._local: dict[str, tuple[str | None, set[str]]] = {}
        self._capped_add = redis.register_script(_CAPPED_ADD)
        self._tasks = TaskSet()
        self.purged = 0
        """Connections this instance purged from dead instances."""

    # ---------------------------------------------------------------- keys

    def _conn(self, connection_id: str) -> str:
        return f"{self._keys}:conn:{connection_id}"

    def _user(self, user_id: str) -> str:
        return f"{self._keys}:user:{user_id}"

    def _room(self, room: str) -> str:
        return f"{self._keys}:room:{room}"

    def _instance(self, instance_id: str) -> str:
        return f"{self._keys}:instance:{instance_id}"

    def _alive(self, instance_id: str) -> str:
        return f"{self._keys}:alive:{instance_id}"

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Announce this instance and start the refresh loop."""
        await self._announce()
        self._tasks.spawn(self._run(), name="roomcast-presence")

    async def stop(self) -> None:
        """Stop refreshing and remove this instance's records (a clean exit purges itself)."""
        await self._tasks.cancel_all()
        with contextlib.suppress(Exception):
            await self._purge(self.instance_id, report=False)

    # ---------------------------------------------------------------- records

    async def add(
        self, connection_id: str, user_id: str | None, max_per_user: int | None = None
    ) -> bool:
        """Record a new connection; False (nothing recorded) if its user is at the cap."""
        ttl = self._connection_ttl
        if user_id is not None:
            cap = max_per_user if max_per_user is not None else 2**31
            added = await self._capped_add(
                keys=[self._user(user_id)], args=[connection_id, cap, ttl]
            )
            if not added:
                return False
        record = {
            "user": json.dumps(user_id),
            "instance": self.instance_id,
            "rooms": "[]",
            "connected_at": f"{time.time():.3f}",
        }
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._conn(connection_id), mapping=record)
            pipe.expire(self._conn(connection_id), ttl)
            pipe.sadd(self._instance(self.instance_id), connection_id)
            pipe.expire(self._instance(self.instance_id), ttl)
            await pipe.execute()
        self._local[connection_id] = (user_id, set())
        return True

    async def remove(self, connection_id: str) -> None:
        """Forget a connection of this instance."""
        local = self._local.pop(connection_id, None)
        if local is None:
            return
        user_id, rooms = local
        await self._delete(connection_id, user_id, rooms, self.instance_id)

    async def join(self, connection_id: str, room: str) -> None:
        local = self._local.get(connection_id)
        if local is None or room in local[1]:
            return
        local[1].add(room)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(self._room(room), connection_id)
            pipe.expire(self._room(room), self._connection_ttl)
            pipe.hset(self._conn(connection_id), "rooms", json.dumps(sorted(local[1])))
            await pipe.execute()

    async def leave(self, connection_id: str, room: str) -> None:
        local = self._local.get(connection_id)
        if local is None or room not in local[1]:
            return
        local[1].discard(room)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.srem(self._room(room), connection_id)
            pipe.hset(self._conn(connection_id), "rooms", json.dumps(sorted(local[1])))
            await pipe.execute()

    async def at_cap(self, user_id: str, max_per_user: int) -> bool:
        """Whether ``user_id`` already has ``max_per_user`` connections (a cheap check before
        accepting; ``add`` enforces the cap atomically)."""
        return int(await self._redis.scard(self._user(user_id))) >= max_per_user

    # ---------------------------------------------------------------- cluster-wide queries

    async def room_members(self, room: str) -> set[str]:
        """Connection ids in ``room`` on every instance."""
        return {_text(member) for member in await self._redis.smembers(self._room(room))}

    async def room_size(self, room: str) -> int:
        """How many connections are in ``room`` on every instance (one SCARD)."""
        return int(await self._redis.scard(self._room(room)))

    async def user_connections(self, user_id: str) -> set[str]:
        """Connection ids of ``user_id`` on every instance."""
        return {_text(member) for member in await self._redis.smembers(self._user(user_id))}

    async def is_user_online(self, user_id: str) -> bool:
        return bool(await self._redis.scard(self._user(user_id)))

    async def connection_count(self) -> int:
        """Connections on every live or not yet purged instance."""
        instances = [_text(i) for i in await self._redis.smembers(f"{self._keys}:instances")]
        if not instances:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for instance in instances:
                pipe.scard(self._instance(instance))
            counts = await pipe.execute()
        return int(sum(counts))

    async def instances(self) -> set[str]:
        return {_text(i) for i in await self._redis.smembers(f"{self._keys}:instances")}

    # ---------------------------------------------------------------- the loop

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self._announce()
                await self._refresh()
                await self.purge_dead()
            except Exception as exc:  # Redis away: try again next round
                logger.warning("presence refresh failed: %s", exc)

    async def _announce(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._alive(self.instance_id), "1", px=int(self._instance_ttl * 1000))
            pipe.sadd(f"{self._keys}:instances", self.instance_id)
            await pipe.execute()

    async def _refresh(self) -> None:
        """Extend the TTL of every record of this instance, 500 connections per round trip."""
        ttl = self._connection_ttl
        local = list(self._local.items())
        for start in range(0, len(local), 500):
            async with self._redis.pipeline(transaction=False) as pipe:
                for connection_id, (user_id, rooms) in local[start : start + 500]:
                    pipe.expire(self._conn(connection_id), ttl)
                    if user_id is not None:
                        pipe.expire(self._user(user_id), ttl)
                    for room in rooms:
                        pipe.expire(self._room(room), ttl)
                pipe.expire(self._instance(self.instance_id), ttl)
                await pipe.execute()

    async def purge_dead(self) -> int:
        """Purge every instance whose liveness key expired; returns connections purged."""
        purged = 0
        for instance in await self.instances():
            if instance == self.instance_id or await self._redis.exists(self._alive(instance)):
                continue
            lock = f"{self._keys}:purging:{instance}"
            if not await self._redis.set(lock, self.instance_id, nx=True, ex=60):
                continue  # another survivor is on it
            try:
                purged += await self._purge(instance, report=True)
            finally:
                await self._redis.delete(lock)
        return purged

    async def _purge(self, instance: str, *, report: bool) -> int:
        members = [_text(m) for m in await self._redis.smembers(self._instance(instance))]
        stale: list[StaleConnection] = []
        for connection_id in members:
            fields = await self._redis.hgetall(self._conn(connection_id))
            record = {_text(k): _text(v) for k, v in fields.items()}
            user_id = json.loads(record["user"]) if "user" in record else None
            rooms = tuple(json.loads(record.get("rooms", "[]")))
            await self._delete(connection_id, user_id, rooms, instance)
            stale.append(StaleConnection(connection_id, user_id, rooms, instance))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._instance(instance))
            pipe.srem(f"{self._keys}:instances", instance)
            await pipe.execute()
        if report:
            self.purged += len(stale)
            for connection in stale:
                logger.info(
                    "purged connection %s of dead instance %s", connection.connection_id, instance
                )
                await self._report(connection)
        return len(stale)

    async def _report(self, connection: StaleConnection) -> None:
        if self._on_stale is None:
            return
        try:
            outcome = self._on_stale(connection)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("on_stale callback failed")

    async def _delete(
        self, connection_id: str, user_id: str | None, rooms: Iterable[str], instance: str
    ) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._conn(connection_id))
            pipe.srem(self._instance(instance), connection_id)
            if user_id is not None:
                pipe.srem(self._user(user_id), connection_id)
            for room in rooms:
                pipe.srem(self._room(room), connection_id)
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
