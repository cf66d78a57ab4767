"""``roomcast serve``'s settings: one frozen dataclass; each field made with ``option(...)`` is
also a flag and a ``ROOMCAST_*`` variable (``roomcast.serve.options``)."""

from __future__ import annotations

import argparse
import dataclasses
import urllib.parse

from roomcast.auth import Authenticator
from roomcast.rules import Rules
from roomcast.serve.options import OptionError, option
from roomcast.serve.workers import WorkerIdentity

__all__ = [
    "ServerConfig",
    "http_url",
    "lifecycle_enabled",
    "refuse_contradictions",
    "webhook_secrets",
]

_AUTH = "authentication"
_HOOKS = "backend hooks"
_EVENTS = "lifecycle events"


def http_url(text: str) -> str:
    """A hook's URL: refused at start-up unless it is ``http(s)://host/...``, which the hook
    client would refuse only when the server starts."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            "a hook URL is http://HOST[:PORT]/PATH or https://..., e.g. "
            "http://127.0.0.1:9000/hooks/connect"
        )
    return text.strip()


def _failure_policy(text: str) -> str:
    word = text.strip().lower()
    if word not in ("deny", "allow"):
        raise argparse.ArgumentTypeError(f"expected deny or allow, not {text.strip()!r}")
    return word


http_url.__name__ = "URL"  # argparse: "invalid URL value"
_failure_policy.__name__ = "policy"


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    """Settings of ``roomcast serve``.  Three are not options: ``authenticator`` (the command
    line builds a ``JWTAuthenticator`` from the ``--jwt-*`` options), ``reuse_port`` and ``worker``
    (set for ``--workers``)."""

    host: str = option("127.0.0.1", "address to bind (the API port too)")
    port: int = option(
        8000, "port of the WebSocket listener (and GET /healthz /readyz /metrics)", kind="port"
    )
    max_message_size: int = option(
        64 * 1024, "largest incoming message in bytes (larger: close 1009)"
    )
    send_buffer_limit: int = option(
        1 << 20, "bytes that may wait for one client before it is closed as slow (4008)"
    )
    max_connections: int = option(
        18_000,
        "connections this process accepts (more: HTTP 503); lowered, with a warning, when "
        "the open-file limit cannot hold them",
    )
    close_timeout: float = option(
        5.0, "seconds a closing client gets to finish the close handshake before a reset"
    )
    shutdown_timeout: float = option(
        10.0, "seconds SIGTERM/SIGINT may take to close clients (1001) before aborting them"
    )
    handshake_timeout: float = option(
        5.0, "seconds a new socket gets to complete the WebSocket handshake"
    )
    backlog: int = option(
        4096, "connections the kernel keeps waiting to be accepted (at most the socket budget)"
    )
    api_port: int | None = option(
        None,
        "port of the HTTP API (POST /api/publish, /healthz, /readyz, /metrics); needs "
        "--api-key; off unless given (-1: off)",
        kind="port-or-off",
    )
    api_max_connections: int = option(
        256,
        "connections the API port holds at once (more: HTTP 503); kept free of the "
        "WebSocket port's descriptor budget",
    )
    api_header_timeout: float = option(
        10.0, "seconds from accept within which an API request's head must arrive (else 408)"
    )
    api_body_timeout: float = option(
        10.0, "seconds after the head within which an API request's body must arrive (else 408)"
    )
    api_key: str | None = option(
        None,
        "key POST /api/publish requires in X-API-Key (--api-port refuses to start without "
        "one); "
        "prefer the ROOMCAST_API_KEY variable, which other users cannot see in the process list",
        kind=str,
        secret=True,
    )
    redis_url: str | None = option(
        None,
        "Redis shared by every instance of the hub (redis://[user:password@]host:port/db, "
        "rediss:// for TLS); without it the hub is in memory, in this process only. A URL "
        "with a password belongs in ROOMCAST_REDIS_URL",
        kind="redis-url",
        secret=True,
    )
    channel_prefix: str = option(
        "ws",
        "prefix of the Redis channels; hubs with different prefixes share a Redis without "
        "seeing each other's messages",
    )
    reuse_port: bool = False
    """Bind with SO_REUSEPORT, so several processes share the ports (``--workers``)."""
    worker: WorkerIdentity | None = None
    """Set in each worker of ``--workers``: with ``redis_url``, ``/metrics`` and ``/readyz``
    then answer for every worker (``roomcast.serve.workers``)."""
    authenticator: Authenticator | None = None
    """Verifies a token on every upgrade (must be synchronous here, e.g. JWTAuthenticator);
    the identity's user id replaces ``?user_id=``.  None: no authentication."""
    connect_hook_url: str | None = option(
        None,
        "your backend's URL that decides who each client opening a WebSocket is (roomcast "
        "POSTs the request's cookie, authorization, origin, user-agent, x-forwarded-for headers, "
        "query and path; the answer gives the user id, its rooms and data, or refuses); with "
        "--jwt-*: asked only for upgrades that bring no token",
        kind=http_url,
        group=_HOOKS,
    )
    join_hook_url: str | None = option(
        None,
        "your backend's URL that decides each join the room rules allowed (yes, yes with data "
        "for the join ack, or no with a reason); /ws/ROOM upgrades are then refused",
        kind=http_url,
        group=_HOOKS,
    )
    publish_hook_url: str | None = option(
        None,
        "your backend's URL that decides each publish the room rules allowed (yes, yes with "
        "other data to publish, or no with a reason)",
        kind=http_url,
        group=_HOOKS,
    )
    hook_timeout: float = option(
        1.0,
        "seconds a hook call may take, waiting for a free slot included, before the failure "
        "policy decides (less than --handshake-timeout with a connect hook)",
        group=_HOOKS,
    )
    hook_max_in_flight: int = option(
        64,
        "hook requests at the backend at once, over as many keep-alive connections; more "
        "calls wait for a free slot, within --hook-timeout",
        group=_HOOKS,
    )
    hook_failure_policy: str = option(
        "deny",
        "what a hook call that gets no usable answer (timeout, HTTP error, unexpected JSON, "
        "unreachable) decides: deny refuses (a connect with HTTP 503, a join or publish with "
        "error 1013); allow lets a join or publish go ahead and a connect in as an anonymous "
        "client",
        kind=_failure_policy,
        group=_HOOKS,
    )
    hook_secret: str | None = option(
        None,
        "HMAC secret that signs every hook request (the Roomcast-Signature header, over the "
        "body) for your backend to verify; prefer the ROOMCAST_HOOK_SECRET variable",
        kind=str,
        secret=True,
        group=_HOOKS,
    )
    capabilities_claim: str = option(
        "rooms",
        "the token claim that lists what the client may do in which rooms, e.g. "
        '{"chat:*": ["join", "publish"]}; tokens without it get what their namespace allows',
        group=_AUTH,
    )
    rules: Rules | None = None
    """The namespaces (from ``--config``'s ``[namespaces.*]`` tables); None: every room
    follows the default namespace (every action allowed, other users' personal rooms not)."""
    rate_limit: float = option(
        100.0,
        "messages per second a client may send on average (pings, pongs and continuation "
        "frames count); over it: error 1008, and 50 refusals in a row close it (0: no limit)",
        off_at_zero=True,
    )
    rate_burst: int = option(200, "messages a client may send at once before the rate applies")
    max_rooms_per_connection: int = option(
        100, "rooms one connection may be in (a join beyond: error 1008)"
    )
    max_connections_per_user: int = option(
        0, "connections per user id in this process (more: HTTP 403; 0: no cap)", off_at_zero=True
    )
    echo: bool = option(
        False,
        "also serve /echo, which sends every message back (for protocol test suites such as "
        "Autobahn)",
        kind="switch",
    )
    allowed_origins: frozenset[str] | None = option(
        None,
        "comma-separated Origins browsers may connect from (others: HTTP 403); clients that "
        "send no Origin are accepted; without it: any",
        kind="origins",
        group=_AUTH,
    )
    token_grace: float = option(
        30.0,
        'seconds a client whose token expired gets to send a new one ({"type": "auth"}) '
        "before it is closed with 4001",
        group=_AUTH,
    )
    token_in_query: bool = option(
        True,
        "refuse ?token= (browsers cannot set headers, but query strings end up in access logs)",
        kind="off-switch",
        group=_AUTH,
    )
    ping_interval: float = option(
        20.0, "seconds between protocol pings to each client (0: no heartbeat)", off_at_zero=True
    )
    pong_timeout: float = option(
        20.0, "a client silent for ping-interval + pong-timeout seconds is disconnected"
    )
    presence: bool | None = option(
        None,
        "serve presence ($presence:ROOM rooms); default: on without --redis-url, off with it "
        "(cluster-wide presence keeps a roster in Redis and publishes every join and leave: "
        "1.4-2.1x the handshake CPU)",
        kind="either",
    )
    stats_interval: float = option(
        1.0,
        "seconds between this instance's figures in the $stats room (0: none)",
        off_at_zero=True,
    )
    demo: bool = option(
        True, "do not serve the demo page at / (/client.js is always served)", kind="off-switch"
    )
    max_rooms: int = option(
        100_000,
        "rooms with members this process holds (a room costs a few hundred bytes plus its "
        "name); a join opening one more: error 1013",
    )
    max_id_bytes: int = option(256, "longest room or user id, in UTF-8 bytes")
    history_size: int = option(
        100,
        "messages each room keeps for clients that reconnect and for history reads (0: no "
        "history; messages then carry no offset)",
        off_at_zero=True,
    )
    history_ttl: float = option(
        300.0,
        "seconds a room's messages are kept; a room silent that long forgets its history "
        "(its epoch changes)",
    )
    history_max_bytes: int = option(
        64 << 20,
        "bytes of history this process keeps without --redis-url (the rooms published to "
        "least recently lose theirs first); with Redis, history lives in Redis",
    )
    webhook_url: str | None = option(
        None,
        "http(s) URL the lifecycle events (connect, disconnect, join, leave, occupied, "
        "vacated, publish) are POSTed to, signed, retried until answered 2xx (docs/events.md)",
        kind=str,
        group=_EVENTS,
    )
    webhook_secret: str | None = option(
        None,
        "key the webhooks are signed with (HMAC-SHA256); comma-separated during a rotation, "
        "the current one first; prefer the ROOMCAST_WEBHOOK_SECRET variable",
        kind=str,
        secret=True,
        group=_EVENTS,
    )
    lifecycle_events: bool | None = option(
        None,
        "record lifecycle events; default: on with --webhook-url; without one it needs "
        "--redis-url, and the events wait in the Redis stream {PREFIX:life}:events for a "
        "consumer of yours",
        kind="either",
        group=_EVENTS,
    )
    events_debounce: float = option(
        5.0,
        "seconds a disconnect, leave or vacated waits for a comeback (one within it emits "
        "nothing; 0: at once)",
        off_at_zero=True,
        group=_EVENTS,
    )
    events_max: int = option(
        100_000,
        "events waiting for delivery at most (the outbox; with Redis the stream's MAXLEN); "
        "beyond, the oldest are dropped and counted",
        group=_EVENTS,
    )
    webhook_timeout: float = option(
        5.0,
        "seconds one webhook request may take, connecting and reading the answer included "
        "(longer: retried)",
        group=_EVENTS,
    )


def refuse_contradictions(config: ServerConfig) -> None:
    """Refuse settings that each parse but cannot work together.

    Raises:
        OptionError: what to change, on one line.
    """
    port, api_port = config.port, config.api_port
    if api_port is not None and api_port == port != 0:
        raise OptionError(
            f"--api-port {api_port} is also --port: give the API a port of its own, e.g. "
            f"--api-port {port + 1 if port < 65535 else port - 1}"
        )
    hooked = (config.connect_hook_url, config.join_hook_url, config.publish_hook_url)
    if config.hook_secret is not None and not any(hooked):
        raise OptionError(
            "--hook-secret signs hook requests, but no hook is set: give --connect-hook-url, "
            "--join-hook-url or --publish-hook-url, or drop ROOMCAST_HOOK_SECRET"
        )
    if config.connect_hook_url and config.hook_timeout >= config.handshake_timeout:
        raise OptionError(
            f"--hook-timeout {config.hook_timeout:g} must be less than --handshake-timeout "
            f"{config.handshake_timeout:g}: a connect hook is asked within the handshake, and "
            "the client would be cut off before its answer"
        )
    if api_port is not None and not config.api_key:
        raise OptionError(
            "--api-port needs a key: set ROOMCAST_API_KEY (or --api-key), which publishers "
            "then send in the X-API-Key header"
        )
    _refuse_event_contradictions(config)


def _refuse_event_contradictions(config: ServerConfig) -> None:
    """Webhooks that could not be sent (no key, not HTTP) and events that nobody would read
    (on without a URL or Redis), or none to send (off with a URL): refused at start, not
    discovered as a silent backlog."""
    url, events = config.webhook_url, config.lifecycle_events
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OptionError(
                "--webhook-url must be http://HOST/... or https://HOST/... (given: a "
                f"{parts.scheme or 'schemeless'} URL)"
            )
        if not webhook_secrets(config):
            raise OptionError(
                "--webhook-url needs a signing key: set ROOMCAST_WEBHOOK_SECRET (or "
                "--webhook-secret), which the receiver uses to verify each delivery"
            )
        if events is False:
            raise OptionError(
                "--no-lifecycle-events with --webhook-url: there would be nothing to send; "
                "drop one of them"
            )
    elif events and config.redis_url is None:
        raise OptionError(
            "--lifecycle-events without --webhook-url needs --redis-url (the events then "
            "wait in a Redis stream for your consumer); in this process nothing would read them"
        )


def webhook_secrets(config: ServerConfig) -> list[bytes]:
    """The signing keys of ``--webhook-secret``, the current one first."""
    text = config.webhook_secret or ""
    return [part.strip().encode() for part in text.split(",") if part.strip()]


def lifecycle_enabled(config: ServerConfig) -> bool:
    """Whether lifecycle events are recorded: ``--lifecycle-events`` if given, else whether
    there is a webhook to send them to."""
    if config.lifecycle_events is not None:
        return config.lifecycle_events
    return config.webhook_url is not None
