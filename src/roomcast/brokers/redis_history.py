"""Room history in Redis: a stream and a small hash per room, written with the publish.

A message of a room with history is published by one Lua script that, atomically, increments
the room's top offset, appends the envelope to the room's stream (trimmed to ``size`` entries
and to ``ttl``), and publishes it on the room's channel with its position in front
(``roomcast.brokers.envelope``).  So offsets follow the channel's order exactly, and no
message is ever published without being stored, or stored without being published.

Keys per room: ``{prefix}:history:{room}:top`` (a hash: ``top``, ``epoch``) and
``...:log`` (the stream; entry ids are Redis' own, ordered by time, which is how ``ttl``
trims them).  The stream's entries have consecutive offsets, the newest being ``top``, so
offset *n* is the entry ``top - n`` from the end: no offset is stored per entry.  Both keys
expire after ``ttl`` without a publish; a room whose hash is gone starts a new epoch.

On a Redis Cluster, the keys carry a hash tag that puts them in the slot of the room's
channel, since a script may only touch keys of one slot and publish (SPUBLISH) there.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import hashlib
import itertools
import logging
from collections.abc import Callable, Collection
from typing import Any

from redis.crc import key_slot

from roomcast.brokers.base import Channels, Outbound, PositionReply
from roomcast.brokers.envelope import Target
from roomcast.errors import BrokerUnavailable
from roomcast.history.positions import HistoryLimits, Page, Position, new_epoch, valid_epoch

__all__ = [
    "PUBLISH_SCRIPT",
    "READ_SCRIPT",
    "history_keys",
    "parse_page",
    "publish_command",
    "read_command",
    "reply_position",
    "sha",
]

logger = logging.getLogger("roomcast.redis")

Command = Callable[[bytes, bool], tuple[Any, ...]]
"""Makes a command from the channel's encoded name and whether the node is a cluster's."""

PUBLISH_SCRIPT = """
local top = redis.call('HINCRBY', KEYS[1], 'top', 1)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
if top == 1 then
  redis.call('DEL', KEYS[2])
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'e', ARGV[2])
redis.call('XTRIM', KEYS[2], 'MINID', ms - tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[6], ARGV[1], 'RP' .. top .. ',' .. epoch .. ',' .. ARGV[2])
return {top, epoch}
"""
"""KEYS: hash, stream.  ARGV: channel, envelope, size, ttl (ms), a new epoch (used if the room
has none), the publish command (PUBLISH or SPUBLISH).  Returns {offset, epoch}."""

READ_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  local recovered = 0
  if ARGV[2] == '' or ARGV[2] == '0' then
    recovered = 1
  end
  return {0, '', recovered, 1, {}}
end
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XTRIM', KEYS[2], 'MINID', ms - tonumber(ARGV[4]))
local kept = redis.call('XLEN', KEYS[2])
local oldest = top - kept + 1
local limit = tonumber(ARGV[3])
local first
if ARGV[2] == '' then
  local count = math.min(limit, kept)
  first = top - count + 1
else
  local since = tonumber(ARGV[2])
  local ok
  if since == 0 then
    ok = oldest <= 1
  else
    ok = ARGV[1] == epoch and since <= top and since >= oldest - 1
  end
  if not ok then
    return {top, epoch, 0, top + 1, {}}
  end
  first = since + 1
end
local count = math.min(limit, top - first + 1)
local payloads = {}
if count > 0 then
  local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', top - first + 1)
  for index = #entries, #entries - count + 1, -1 do
    payloads[#payloads + 1] = entries[index][2][2]
  end
end
return {top, epoch, 1, first, payloads}
"""
"""KEYS: hash, stream.  ARGV: since's epoch, since's offset ('' for the latest), limit,
ttl (ms).  Returns {top, epoch, recovered (0/1), first offset, payloads}; a room without
history is at offset 0 of epoch ''."""


class HistoryCommands(abc.ABC):
    """``RedisBroker``'s history calls (it provides the queue, the numbering and the names)."""

    _outbound: Outbound
    _channels: Channels
    _socket_timeout: float
    _resubscribed: list[Callable[[], None]]

    @abc.abstractmethod
    def _enqueue(
        self,
        channel: str,
        data: bytes,
        result: asyncio.Future[Any] | None,
        command: Command | None = None,
    ) -> None: ...

    def publish_positioned(
        self,
        room: str,
        payload: bytes,
        limits: HistoryLimits,
        *,
        exclude: Collection[str],
        reply: PositionReply,
    ) -> tuple[int, int]:
        """Store and publish a message of a room with history, in one script (see
        ``roomcast.brokers.redis_history``); ``reply`` gets its position."""
        channel, data, key = self._outbound.seal_numbered(
            Target.ROOM, room, payload, exclude=exclude
        )
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        result.add_done_callback(functools.partial(reply_position, reply))
        command = publish_command(self._channels.prefix, room, data, limits, new_epoch())
        self._enqueue(channel, data, result, command)
        return key

    def on_resubscribed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the broker is subscribed again after a lost connection."""
        self._resubscribed.append(callback)

    async def read_history(
        self, room: str, since: Position | None, limit: int, limits: HistoryLimits
    ) -> Page:
        """Read ``room``'s history (queued behind this instance's publishes, so it sees
        every message published here before).

        Raises:
            BrokerUnavailable: Redis is not connected, or did not answer in time.
        """
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        command = read_command(self._channels.prefix, room, since, limit, limits)
        self._enqueue(self._channels.room(room), b"", result, command)
        try:
            async with asyncio.timeout(self._socket_timeout):
                return parse_page(await result)
        except TimeoutError:
            raise BrokerUnavailable("Redis did not answer a history read in time") from None
        except (ValueError, TypeError) as exc:
            raise BrokerUnavailable(f"unexpected history reply from Redis: {exc}") from None


def sha(script: str) -> str:
    """The SHA1 by which Redis knows a loaded script (EVALSHA)."""
    return hashlib.sha1(script.encode()).hexdigest()


def history_keys(prefix: str, room: str, channel: bytes, sharded: bool) -> tuple[bytes, bytes]:
    """The room's hash and stream keys; on a cluster, in the slot of ``channel``."""
    base = f"{prefix}:history:{room}".encode("utf-8", "surrogatepass")
    if sharded:
        base = b"{" + _slot_tag(key_slot(channel)) + b"}" + base
    return base + b":top", base + b":log"


_tags: dict[int, bytes] = {}


def _slot_tag(slot: int) -> bytes:
    """A short string whose hash slot is ``slot`` (the same for every instance: the first
    in a fixed order), as a hash tag for keys that must live beside a channel."""
    tag = _tags.get(slot)
    if tag is None:
        for number in itertools.count():
            candidate = format(number, "x").encode()
            found = key_slot(candidate)
            _tags.setdefault(found, candidate)
            if found == slot:
                tag = candidate
                break
    assert tag is not None
    return tag


def publish_args(
    keys: tuple[bytes, bytes],
    channel: bytes,
    envelope: bytes,
    limits: HistoryLimits,
    epoch: str,
    sharded: bool,
) -> tuple[Any, ...]:
    """The EVALSHA command that stores and publishes one message."""
    return (
        b"EVALSHA",
        _PUBLISH_SHA,
        2,
        *keys,
        channel,
        envelope,
        limits.size,
        _ttl_ms(limits),
        epoch,
        b"SPUBLISH" if sharded else b"PUBLISH",
    )


def read_args(
    keys: tuple[bytes, bytes],
    since: Position | None,
    limit: int,
    limits: HistoryLimits,
) -> tuple[Any, ...]:
    """The EVALSHA command that reads a room's history."""
    return (
        b"EVALSHA",
        _READ_SHA,
        2,
        *keys,
        "" if since is None else since.epoch,
        "" if since is None else since.offset,
        limit,
        _ttl_ms(limits),
    )


def parse_position(reply: Any) -> Position:
    """The publish script's reply."""
    epoch = _text(reply[1])
    return Position(epoch, int(reply[0]))


def parse_page(reply: Any) -> Page:
    """The read script's reply."""
    top, epoch, recovered, first, payloads = reply
    position = Position(_text(epoch, empty=int(top) == 0), int(top))
    return Page(position, list(payloads), int(first), bool(recovered))


def publish_command(
    prefix: str, room: str, envelope: bytes, limits: HistoryLimits, epoch: str
) -> Command:
    """The command that stores and publishes one message of ``room``."""

    def command(channel: bytes, sharded: bool) -> tuple[Any, ...]:
        keys = history_keys(prefix, room, channel, sharded)
        return publish_args(keys, channel, envelope, limits, epoch, sharded)

    return command


def read_command(
    prefix: str, room: str, since: Position | None, limit: int, limits: HistoryLimits
) -> Command:
    """The command that reads ``room``'s history."""

    def command(channel: bytes, sharded: bool) -> tuple[Any, ...]:
        return read_args(history_keys(prefix, room, channel, sharded), since, limit, limits)

    return command


def reply_position(reply: Callable[[Position | None], None], result: asyncio.Future[Any]) -> None:
    """Hand the publish script's answer (or None if it failed) to ``reply``."""
    position = None
    if not result.cancelled() and result.exception() is None:
        try:
            position = parse_position(result.result())
        except (ValueError, TypeError, IndexError):
            logger.warning("unexpected reply from the history script: %r", result.result())
    reply(position)


def _text(epoch: Any, empty: bool = False) -> str:
    text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
    if not valid_epoch(text) and not (empty and text == ""):
        raise ValueError(f"unexpected epoch {text!r} in Redis")
    return text


def _ttl_ms(limits: HistoryLimits) -> int:
    return max(1, round(limits.ttl * 1000))


_PUBLISH_SHA = sha(PUBLISH_SCRIPT)
_READ_SHA = sha(READ_SCRIPT)
SCRIPTS = (PUBLISH_SCRIPT, READ_SCRIPT)
"""Loaded on every publishing connection when it connects."""
