"""An instance that records lifecycle changes and then waits to be killed (kill -9 drill).

Run by ``tests/integration/test_redis_lifecycle_faults.py`` as ``python -m
tests.lifecycle_worker CONFIG_JSON``: starts a ``RedisLifecycle``, connects each user of
``users`` to each room of ``rooms``, prints ``ready`` once Redis has it all, and sleeps.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import redis.asyncio

from roomcast.brokers.redis_lifecycle import RedisLifecycle
from roomcast.events.lifecycle import Change, Op


async def main(config: dict[str, Any]) -> None:
    client = redis.asyncio.Redis.from_url(config["url"])
    lifecycle = RedisLifecycle(
        client,
        config["name"],
        prefix=config["prefix"],
        debounce=config["debounce"],
        instance_ttl=config["ttl"],
        refresh_interval=config["ttl"] / 4,
    )
    await lifecycle.start()
    for user in config["users"]:
        lifecycle.record(Change(Op.CONNECT, f"{user}-c", user))
        for room in config["rooms"]:
            lifecycle.record(Change(Op.JOIN, f"{user}-c", user, room))
    if not await lifecycle.flush():
        raise SystemExit("could not write to Redis")
    print("ready", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
