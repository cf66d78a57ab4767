"""What a throwaway redis-server did: calls per command (``INFO commandstats``)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roomcast.testing import RedisServer

__all__ = ["commands"]


def commands(server: RedisServer | None) -> Counter[str]:
    """Calls per command so far on ``server`` (``INFO commandstats``; Redis 7 counts the
    commands a script runs too, and this call's own ``info``)."""
    import redis

    if server is None:
        return Counter()
    client = redis.Redis.from_url(server.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
