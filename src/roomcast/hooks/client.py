"""The HTTP side of the hooks: one aiohttp session, bounded calls, a decision for every call.

Every call ends in a decision within ``timeout`` seconds, whatever the backend does: it
answers (allow, deny), or the failure policy decides (``decisions.on_failure``) because the
backend was too slow, busy, unreachable, answered non-2xx or garbage.  Nobody hangs on a hook.

Concurrency: at most ``max_in_flight`` requests are at the backend at once, over as many
keep-alive connections at most (the connector's limit is the same number, so the connector
never queues).  A call beyond that waits for a free slot, within the same ``timeout`` (a call
never waits longer in all), and only if fewer than ``max_waiting`` calls wait already;
otherwise it is decided at once as ``saturated``.  The slots are an ``asyncio.Semaphore``
rather than the connector's own pool queue because the pool queue has no length bound and
its timeout cannot be told from a slow backend's: here a call that never reached the backend
counts as ``saturated``, one the backend kept too long as ``timeout``.

Failures are logged within a budget (``EventLog``): a line with the hook, the backend's
address (without query or credentials) and the cause, never a traceback, never a body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from roomcast.events.signing import HEADER as SIGNATURE_HEADER
from roomcast.events.signing import signature_header
from roomcast.figures import Family
from roomcast.hooks.decisions import (
    FORWARDED_HEADERS,
    MAX_ANSWER_BYTES,
    AnswerError,
    ConnectDecision,
    Decision,
    Denied,
    Failure,
    Hook,
    Policy,
    connect_request,
    join_request,
    on_connect_failure,
    on_failure,
    parse_connect,
    parse_join,
    parse_publish,
    publish_request,
)
from roomcast.hooks.metrics import HookStats, hook_families
from roomcast.logbudget import EventLog

__all__ = ["HookClient"]

logger = logging.getLogger("roomcast.hooks")

D = TypeVar("D", Decision, ConnectDecision)


class _Refused(Exception):
    """A call decided before any request: too many calls wait already."""


class _TooLarge(Exception):
    """An answer over ``MAX_ANSWER_BYTES``."""


class _Line:
    """One configured hook: where it goes, what its failures decide, what it did."""

    __slots__ = ("label", "policy", "stats", "url")

    def __init__(self, hook: Hook, url: str, policy: Policy) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the {hook.value} hook's URL must be http(s)://host/..., not {url!r}")
        self.url = url
        self.label = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"
        self.policy = policy
        self.stats = HookStats(hook.value)


class HookClient:
    """Calls a backend's hooks over one keep-alive HTTP session.

    Args:
        connect_url: The connect hook's URL (None: no connect hook).
        join_url: The join hook's URL (None: no join hook).
        publish_url: The publish hook's URL (None: no publish hook).
        timeout: Seconds a call may take in all, waiting for a slot included.
        max_in_flight: Requests at the backend at once (and keep-alive connections at most).
        max_waiting: Calls that may wait for a slot; more are decided at once (``saturated``).
        policy: What a failed call decides: one ``Policy`` (or "deny"/"allow") for every
            hook, or a mapping of hook name to policy (hooks not named: deny).
        headers: Sent with every request, e.g. ``{"Authorization": "Bearer ..."}``, so the
            backend knows the call comes from roomcast.
        secrets: HMAC secrets: each request then carries ``Roomcast-Signature`` over its body,
            as the webhooks do (``roomcast.events.signing``; the first secret is the current
            one, the others are for a rotation).
        forward_headers: Headers passed to the connect hook besides ``FORWARDED_HEADERS``.
        keepalive: Seconds an idle connection to the backend is kept for reuse.
        events: Where failures are logged (default: the ``roomcast.hooks`` logger, with a
            budget).

    Raises:
        ValueError: a URL that is not http(s), a policy that is not deny/allow, a limit that is
            not positive.
    """

    def __init__(
        self,
        *,
        connect_url: str | None = None,
        join_url: str | None = None,
        publish_url: str | None = None,
        timeout: float = 1.0,
        max_in_flight: int = 64,
        max_waiting: int = 4096,
        policy: Policy | str | Mapping[str, Policy | str] = Policy.DENY,
        headers: Mapping[str, str] | None = None,
        secrets: Sequence[bytes] = (),
        forward_headers: Iterable[str] = (),
        keepalive: float = 30.0,
        events: EventLog | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"the hook timeout must be positive seconds, not {timeout!r}")
        if max_in_flight < 1 or max_waiting < 0:
            raise ValueError("max_in_flight must be at least 1 and max_waiting at least 0")
        policies = _policies(policy)
        urls = {Hook.CONNECT: connect_url, Hook.JOIN: join_url, Hook.PUBLISH: publish_url}
        self._lines = {
            hook: _Line(hook, url, policies[hook]) for hook, url in urls.items() if url is not None
        }
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._max_waiting = max_waiting
        self._waiting = 0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._secrets = list(secrets)
        self._forward = (*FORWARDED_HEADERS, *(name.lower() for name in forward_headers))
        self._keepalive = keepalive
        self._events = events or EventLog(logger)
        self._session: aiohttp.ClientSession | None = None

    @property
    def hooks(self) -> frozenset[Hook]:
        """The hooks that have a URL."""
        return frozenset(self._lines)

    async def start(self) -> None:
        """Open the session (in the running loop); calls before this raise RuntimeError."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_in_flight, keepalive_timeout=self._keepalive
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),  # every call has its own bound
                trust_env=False,
            )

    async def stop(self) -> None:
        """Close the session and its connections; calls still running fail (``unreachable``)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def connect(
        self, headers: Iterable[tuple[str, str]], query: str, path: str, remote: str | None
    ) -> ConnectDecision:
        """Ask the connect hook who the client of an upgrade request is.

        Args:
            headers: The request's headers (only the forwarded ones are sent).
            query: The raw query string.
            path: The request path.
            remote: The client's address.
        """
        body = connect_request(headers, query, path, remote, forward=self._forward)
        return await self._call(Hook.CONNECT, body, parse_connect, on_connect_failure)

    async def join(
        self, user: str | None, connection: str, room: str, data: Any = None
    ) -> Decision:
        """Ask the join hook whether ``connection`` may join ``room`` (``data``: what the
        connect hook returned for it)."""
        body = join_request(user, connection, room, data)
        return await self._call(Hook.JOIN, body, parse_join, on_failure)

    async def publish(self, user: str | None, connection: str, room: str, data: Any) -> Decision:
        """Ask the publish hook whether ``connection`` may publish ``data`` in ``room``."""
        body = publish_request(user, connection, room, data)
        return await self._call(Hook.PUBLISH, body, parse_publish, on_failure)

    def stats(self, hook: Hook) -> HookStats:
        """The figures of a configured hook."""
        return self._line(hook).stats

    def families(self) -> list[Family]:
        """Every configured hook's figures, as labelled ``/metrics`` families."""
        return hook_families(line.stats for line in self._lines.values())

    def _line(self, hook: Hook) -> _Line:
        line = self._lines.get(hook)
        if line is None:
            raise RuntimeError(f"the {hook.value} hook has no URL")
        return line

    async def _call(
        self,
        hook: Hook,
        body: bytes,
        parse: Callable[[bytes], D],
        fail: Callable[[Policy, Failure], D],
    ) -> D:
        line = self._line(hook)
        session = self._session
        if session is None:
            raise RuntimeError("HookClient.start() was not called (or stop() was)")
        stats = line.stats
        loop = asyncio.get_running_loop()
        started = loop.time()
        failure: Failure | None = None
        detail = ""
        phase = Failure.SATURATED
        try:
            async with asyncio.timeout(self._timeout):
                await self._acquire(stats)
                try:
                    phase = Failure.TIMEOUT
                    stats.in_flight += 1
                    stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
                    status, answer = await self._post(session, line.url, body)
                finally:
                    stats.in_flight -= 1
                    self._slots.release()
            if 200 <= status < 300:
                decision = parse(answer)
            else:
                failure, detail = Failure.STATUS, f"HTTP {status}"
        except TimeoutError:
            failure, detail = phase, f"no decision within {self._timeout:g} s"
        except _Refused:
            failure, detail = Failure.SATURATED, f"{self._max_waiting} calls wait already"
        except (_TooLarge, AnswerError) as exc:
            failure, detail = Failure.INVALID, str(exc) or f"over {MAX_ANSWER_BYTES} bytes"
        except (aiohttp.ClientError, OSError) as exc:
            failure, detail = Failure.UNREACHABLE, f"{type(exc).__name__}: {exc}"
        stats.observe(loop.time() - started)
        if failure is not None:
            stats.failures[failure] += 1
            self._events.event(
                f"hook_{failure.value}", "%s hook at %s: %s", hook.value, line.label, detail
            )
            return fail(line.policy, failure)
        if isinstance(decision, Denied):
            stats.denied += 1
        else:
            stats.allowed += 1
        return decision

    async def _acquire(self, stats: HookStats) -> None:
        """Take a slot, waiting (within the caller's timeout) only if few calls wait."""
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: returns without suspending
            return
        if self._waiting >= self._max_waiting:
            raise _Refused
        self._waiting += 1
        stats.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            stats.waiting -= 1

    async def _post(
        self, session: aiohttp.ClientSession, url: str, body: bytes
    ) -> tuple[int, bytes]:
        """POST ``body``; the status and the answer (read in full, so that the connection
        goes back to the pool)."""
        if session.closed:  # stop() while this call waited for a slot
            raise aiohttp.ClientConnectionError("the hook client was stopped")
        headers = self._headers
        if self._secrets:
            headers = {**headers, SIGNATURE_HEADER: signature_header(self._secrets, body)}
        async with session.post(url, data=body, headers=headers) as response:
            length = response.content_length
            if length is not None and length > MAX_ANSWER_BYTES:
                raise _TooLarge
            if length is not None:
                return response.status, await response.read()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise _TooLarge
                chunks.append(chunk)
            return response.status, b"".join(chunks)


def _policies(policy: Policy | str | Mapping[str, Policy | str]) -> dict[Hook, Policy]:
    """One policy per hook, from one for all or a mapping (hooks not named: deny)."""
    if isinstance(policy, str):
        return dict.fromkeys(Hook, _policy(policy))
    unknown = sorted(set(policy) - {hook.value for hook in Hook})
    if unknown:
        raise ValueError(f"no hook named {unknown[0]!r} (hooks: connect, join, publish)")
    return {hook: _policy(policy.get(hook.value, Policy.DENY)) for hook in Hook}


def _policy(value: str) -> Policy:
    try:
        return Policy(value)
    except ValueError:
        raise ValueError(f"a hook failure policy is 'deny' or 'allow', not {value!r}") from None
