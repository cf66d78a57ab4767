"""What one Redis shard costs per roomcast publish (the capacity model in docs/scaling.md).

    .venv/bin/python bench/redis_shard.py

Starts a throwaway redis-server, S subscribing ``RedisPubSub`` instances (S = 1, 3, 10, 30:
the instances with members in a room) listening on one room channel, and one publishing
instance that sends M envelopes (a 180-byte client frame each) through the same path
``DistributedWebSocketManager`` uses.  Measures redis-server CPU (user+sys from /proc) per
publish and per delivered envelope, and the wall-clock rate, until every subscriber has every
envelope.  All instances live in this one Python process, so the wall-clock rate is bounded by
this process (2 cores are shared); the redis-server CPU figures are what a shard would spend.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence

from harness.meta import redis_version
from harness.processes import cpu_ns_of, die_with_parent
from roomcast.brokers.envelope import Envelope, Target
from roomcast.redis_pubsub import RedisPubSub
from roomcast.testing import RedisServer


def cpu_seconds(pid: int) -> float:
    return cpu_ns_of(pid) / 1e9


async def measure(
    url: str, pid: int, subscribers: int, messages: int, size: int
) -> dict[str, float]:
    publisher = RedisPubSub(url, publish_queue_limit=messages + 1)
    receivers = [RedisPubSub(url) for _ in range(subscribers)]
    counts = [0] * subscribers
    done = asyncio.Event()

    def counter(index: int) -> Callable[[Envelope], None]:
        def arrived(envelope: Envelope) -> None:
            counts[index] += 1
            if counts[index] == messages and all(c == messages for c in counts):
                done.set()

        return arrived

    try:
        await publisher.initialize()
        for index, receiver in enumerate(receivers):
            receiver.listen("ws:room:bench", counter(index))
            await receiver.initialize()
        while not all(r.settled for r in receivers):  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.01)
        payload = b"x" * size
        cpu_before, began = cpu_seconds(pid), time.perf_counter()
        for _ in range(messages):
            publisher.publish(Target.ROOM, "bench", payload)
            if publisher.queued >= 2000:
                await asyncio.sleep(0)  # let the writer drain
        await asyncio.wait_for(done.wait(), 120)
        wall = time.perf_counter() - began
        cpu = cpu_seconds(pid) - cpu_before
        assert publisher.stats.publish_failures == 0
        missed = sum(r.stats.missed for r in receivers)
    finally:
        await publisher.close()
        for receiver in receivers:
            await receiver.close()
    return {
        "subscribers": subscribers,
        "messages": messages,
        "redis_cpu_us_per_publish": cpu / messages * 1e6,
        "redis_cpu_us_per_delivery": cpu / (messages * subscribers) * 1e6,
        "publishes_per_s_wall": messages / wall,
        "missed": missed,
    }


async def run_all(url: str, pid: int, args: argparse.Namespace) -> None:
    print(
        "| subscribing instances | redis CPU µs / publish | redis CPU µs / delivery "
        "| publishes/s (wall, one Python process) | missed |"
    )
    print("|---|---|---|---|---|")
    for subscribers in args.subscribers:
        row = await measure(url, pid, subscribers, args.messages, args.size)
        print(
            f"| {subscribers} | {row['redis_cpu_us_per_publish']:.2f} "
            f"| {row['redis_cpu_us_per_delivery']:.2f} "
            f"| {row['publishes_per_s_wall']:,.0f} | {row['missed']:.0f} |"
        )


def main() -> None:
    args = parse_args()
    server = RedisServer(preexec_fn=die_with_parent)
    try:
        server.start()
        version = redis_version().split()[2]
        print(f"redis-server {version}; {args.messages} publishes of a {args.size}-byte frame\n")
        asyncio.run(run_all(server.url, server.pid, args))
    finally:
        server.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=180, help="client frame payload bytes")
    parser.add_argument(
        "--subscribers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3, 10, 30]
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
