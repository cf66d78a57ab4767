"""``POST /api/publish`` and ``GET /api/history``: how a backend sends to rooms and users, and
reads a room's history, over HTTP.

Served on ``--api-port`` (the WebSocket port answers a POST with 405 and where to go).  A
request carries one message (``data``) or up to ``MAX_BATCH`` (``batch``), for a room, a user or
(neither named) every connection of the hub, and needs the key in
``X-API-Key`` (compared in constant time).  Everything is encoded before anything is sent: a
bad item fails the whole request; and whatever one request carries must fit in half a
client's send buffer, or every recipient would be closed as a slow consumer.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import urllib.parse
from typing import Any

from roomcast.brokers.envelope import Target
from roomcast.errors import BrokerUnavailable, InvalidIdentifier, InvalidMessage
from roomcast.frame import Frame, encode
from roomcast.history.positions import Position
from roomcast.hub import Hub
from roomcast.messages import WSMessage, preview
from roomcast.presence.feed import RESERVED_PREFIX
from roomcast.protocol import RoomMessage
from roomcast.serve.history_reads import page_body
from roomcast.serve.http_api import Answer, ApiRequest, ApiResponse
from roomcast.serve.pages import GET_PATHS, Pages

__all__ = ["MAX_BATCH", "PublishApi", "key_matches"]

_STORE_TIMEOUT = 10.0
"""Seconds a publish to a room with history may wait for its position."""

MAX_BATCH = 1000
"""Most messages one ``POST /api/publish`` may carry in ``batch``."""

_WRONG_KEY = {
    "error": "missing or wrong API key: send the key roomcast serve was given (--api-key or "
    "ROOMCAST_API_KEY) in the X-API-Key header",
    "header": "X-API-Key",
}


def key_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; no key configured means nobody matches."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class PublishApi:
    """The API port's request handler.

    Args:
        hub: Where the messages go (every instance, with a broker).
        api_key: The key requests must carry; None refuses every publish (401).
        send_buffer_limit: Clients' send buffers; a request may fill at most half of one.
        pages: Answers the GETs the API port serves too.
    """

    def __init__(self, hub: Hub, api_key: str | None, send_buffer_limit: int, pages: Pages) -> None:
        self._hub = hub
        self._api_key = api_key
        self._send_buffer_limit = send_buffer_limit
        self._pages = pages

    def __call__(self, request: ApiRequest) -> Answer:
        """The answer to one request on the API port."""
        if request.path == "/api/history":
            if request.method != "GET":
                return ApiResponse.json(405, {"error": "use GET"})
            if not key_matches(self._api_key, request.headers.get("x-api-key")):
                return ApiResponse.json(401, _WRONG_KEY)
            return self._history(request.query)
        if request.path != "/api/publish":
            if request.method != "GET":
                return ApiResponse.json(
                    405 if request.path in GET_PATHS else 404, {"error": "not found"}
                )
            status, body, content_type = self._pages.get(request.path)
            return ApiResponse(status, body, content_type)
        if request.method != "POST":
            return ApiResponse.json(405, {"error": "use POST"})
        if not key_matches(self._api_key, request.headers.get("x-api-key")):
            return ApiResponse.json(401, _WRONG_KEY)
        return self._publish(request.body)

    async def _publish_stored(self, room: str, frames: list[Frame]) -> ApiResponse:
        """Publish to a room with history: answered once every message has its position, or
        503 with how many were stored (the others reached nobody)."""
        loop = asyncio.get_running_loop()
        outcomes: list[asyncio.Future[Position | None]] = []
        delivered = 0
        for frame in frames:
            outcome: asyncio.Future[Position | None] = loop.create_future()
            outcomes.append(outcome)
            delivered += self._hub.publish(room, frame, done=functools.partial(_settle, outcome))
        try:
            async with asyncio.timeout(_STORE_TIMEOUT):
                await asyncio.wait(outcomes)
        except TimeoutError:
            pass
        stored = [f.result() for f in outcomes if f.done() and not f.exception()]
        if len(stored) < len(frames):
            failures = [f.exception() for f in outcomes if f.done() and f.exception()]
            why = str(failures[0]) if failures else "no answer from the broker in time"
            return ApiResponse.json(503, {"error": why, "stored": len(stored)})
        answer: dict[str, Any] = {"delivered": delivered}
        if stored and stored[-1] is not None:
            answer["position"] = stored[-1].as_dict()
        return ApiResponse.json(200, answer)

    def _publish(self, body: bytes) -> Answer:
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            return ApiResponse.json(400, {"error": "body is not valid JSON"})
        if not isinstance(request, dict) or ("data" in request) == ("batch" in request):
            return ApiResponse.json(
                400, {"error": "body must be an object with 'data' or a 'batch' list"}
            )
        payloads = [request["data"]] if "data" in request else request["batch"]
        if not isinstance(payloads, list) or not payloads or len(payloads) > MAX_BATCH:
            return ApiResponse.json(400, {"error": f"'batch' must list 1 to {MAX_BATCH} items"})
        room, user_id = request.get("room"), request.get("user_id")
        if room is not None and user_id is not None:
            return ApiResponse.json(
                400, {"error": "give 'room' or 'user_id', not both (neither: every connection)"}
            )
        try:
            # Encode everything before sending anything: a bad item fails the whole batch.
            if room is not None:
                self._hub.check_id("room", room)
                if room.startswith(RESERVED_PREFIX):
                    raise InvalidIdentifier(f"room {preview(room)} is reserved")
                frames = [encode(RoomMessage(room=room, data=data)) for data in payloads]
            else:
                user = "" if user_id is None else self._hub.check_id("user_id", user_id)
                frames = [encode(WSMessage(data=data)) for data in payloads]
        except (InvalidIdentifier, InvalidMessage) as exc:
            return ApiResponse.json(400, {"error": str(exc)})
        # Everything lands in each recipient's send buffer in one go: a batch that does not
        # fit would close every one of them as a slow consumer (4008).
        size, fits = sum(frame.size for frame in frames), self._send_buffer_limit // 2
        if size > fits:
            return ApiResponse.json(
                413,
                {
                    "error": f"the messages encode to {size} bytes; at most {fits} (half of "
                    "--send-buffer-limit) go out at once: split them"
                },
            )
        if room is not None and self._hub.history_limits(room) is not None:
            return self._publish_stored(room, frames)
        if room is not None:
            delivered = sum(self._hub.deliver(Target.ROOM, room, f) for f in frames)
        elif user_id is not None:
            delivered = sum(self._hub.deliver(Target.USER, user, f) for f in frames)
        else:  # everyone, on every instance
            delivered = sum(self._hub.deliver(Target.BROADCAST, "", f) for f in frames)
        return ApiResponse.json(200, {"delivered": delivered})

    def _history(self, query: str) -> Answer:
        fields = urllib.parse.parse_qs(query, max_num_fields=8)
        room = fields.get("room", [None])[0]
        try:
            room = self._hub.check_id("room", room)
            limit = int(fields.get("limit", ["100"])[0])
            since = None
            if "offset" in fields or "epoch" in fields:
                since = Position.parse(
                    {
                        "epoch": fields.get("epoch", [""])[0],
                        "offset": int(fields.get("offset", ["0"])[0]),
                    }
                )
        except (InvalidIdentifier, ValueError) as exc:
            return ApiResponse.json(400, {"error": f"bad query: {exc}"})
        if limit < 0 or self._hub.history_limits(room) is None:
            why = "'limit' must not be negative" if limit < 0 else "the room keeps no history"
            return ApiResponse.json(400 if limit < 0 else 404, {"error": why})
        return self._read(room, since, limit)

    async def _read(self, room: str, since: Position | None, limit: int) -> ApiResponse:
        try:
            page = await self._hub.read_history(room, since, limit)
        except BrokerUnavailable as exc:
            return ApiResponse.json(503, {"error": str(exc)})
        return ApiResponse(200, page_body({"room": room}, page, since is not None))


def _settle(
    outcome: asyncio.Future[Position | None], position: Position | None, failure: str | None
) -> None:
    if outcome.done():
        return
    if failure is not None:
        outcome.set_exception(BrokerUnavailable(failure))
    else:
        outcome.set_result(position)
