"""A bounded, closable queue between the client's reader and the application."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox", "InboxClosed"]

T = TypeVar("T")


class InboxClosed(Exception):
    """The inbox is closed and empty."""


class Inbox(Generic[T]):
    """Holds at most ``size`` items; ``put`` waits for room, ``get`` for an item.

    Waiting for room is the point: a reader that waits stops reading the socket, so a slow
    application slows the connection down instead of growing a buffer without limit.  After
    ``close()``, ``put`` drops items and ``get`` returns what is left, then raises
    ``InboxClosed``.
    """

    __slots__ = ("_closed", "_items", "_readable", "_size", "_writable")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an inbox holds at least one item")
        self._items: deque[T] = deque()
        self._size = size
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """Whether a ``put`` would wait now."""
        return len(self._items) >= self._size

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, item: T) -> None:
        """Add ``item`` once there is room (dropped if the inbox is closed)."""
        while self.full and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if not self._closed:
            self._items.append(item)
            self._readable.set()

    async def get(self) -> T:
        """The oldest item, once there is one.

        Raises:
            InboxClosed: the inbox is closed and empty.
        """
        while not self._items:
            if self._closed:
                raise InboxClosed
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item

    def close(self) -> None:
        """No more items; waiting readers get what is left, then ``InboxClosed``."""
        self._closed = True
        self._readable.set()
        self._writable.set()
