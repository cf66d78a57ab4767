"""Throwaway redis-server processes for tests: own port, no persistence, killable.

Tests never touch a Redis they did not start (a shared one may hold someone's data); fault
tests stop, freeze and restart these on the same port.  The server itself, ``free_port`` and
``redis_server`` live in ``roomcast.testing`` (shared with the benchmarks and users' tests);
this module adds a local Redis Cluster.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

from roomcast.testing import REDIS_CLI, RedisServer, free_port, redis_server

__all__ = ["RedisServer", "cluster_port", "free_port", "redis_cluster", "redis_server"]


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[RedisServer]]:
    """A local Redis Cluster of ``masters`` nodes, no replicas, every slot assigned."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(masters):
            node = RedisServer(
                cluster_port(),
                extra=("--cluster-enabled", "yes", "--cluster-node-timeout", "5000"),
            )
            node.start()
            nodes.append(node)
        assert REDIS_CLI is not None
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.close()
