"""A client of ``roomcast serve`` that publishes the benchmark's messages over its WebSocket
(``{"type": "publish"}``), for figures that must include what a client's publish costs the
server (its permission check, its ack) and not only the fan-out an API publish triggers.

Synchronous (``websockets.sync``), as the driver is: a batch is sent back to back, then every
ack is awaited.  The server leaves the publishing connection out of the fan-out, so what
arrives here is acks (and errors, which end the run).
"""

from __future__ import annotations

import itertools
import json

from websockets.sync.client import ClientConnection, connect

__all__ = ["ClientPublisher"]


class ClientPublisher:
    """One connection that publishes to ``room``; connected at the first batch."""

    def __init__(self, uri: str, room: str) -> None:
        self.uri = uri
        self.room = room
        self._connection: ClientConnection | None = None
        self._ids = itertools.count(1)

    def publish(self, batch: list[str], timeout: float) -> bytes:
        """Send ``batch`` back to back; return once the server acked all of it (the last
        ack's bytes)."""
        connection = self._connection
        if connection is None:
            connection = self._connection = connect(
                self.uri, open_timeout=timeout, max_size=None, compression=None
            )
            self._join(connection, timeout)
        pending: set[str] = set()
        frames = []
        for data in batch:
            event_id = f"p{next(self._ids)}"
            pending.add(event_id)
            frames.append(
                json.dumps(
                    {"type": "publish", "room": self.room, "data": data, "event_id": event_id}
                )
            )
        for frame in frames:
            connection.send(frame)
        last = b""
        while pending:
            raw = connection.recv(timeout=timeout)
            last = raw.encode() if isinstance(raw, str) else raw
            answer = json.loads(last)
            if answer.get("type") == "ack":
                pending.discard(answer.get("ack_event_id"))
            elif answer.get("type") == "error":
                raise RuntimeError(f"the publishing client was refused: {answer}")
        return last

    def _join(self, connection: ClientConnection, timeout: float) -> None:
        connection.send(json.dumps({"type": "join", "room": self.room, "event_id": "j"}))
        while True:
            answer = json.loads(connection.recv(timeout=timeout))
            if answer.get("type") == "ack" and answer.get("ack_event_id") == "j":
                return
            if answer.get("type") == "error":
                raise RuntimeError(f"the publishing client could not join: {answer}")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
