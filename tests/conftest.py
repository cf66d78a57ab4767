"""Fixtures shared by the Redis tests: one throwaway redis-server per session, a fresh channel
prefix per test (so tests never see each other's messages), and one Redis per fault test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.redis_support import RedisServer, redis_server

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """A redis-server for the tests that do not break it."""
    with redis_server() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may kill, freeze and restart."""
    with redis_server() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A channel prefix no other test uses."""
    return f"t{next(_prefixes)}"
