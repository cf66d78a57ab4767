"""Command line: ``roomcast serve``.

Every flag also reads a ``ROOMCAST_<FLAG>`` environment variable (``--max-message-size`` from
``ROOMCAST_MAX_MESSAGE_SIZE``); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from roomcast import __version__
from roomcast.auth import Authenticator

__all__ = ["main"]


def _env(name: str, default: Any) -> Any:
    value = os.environ.get("ROOMCAST_" + name.upper().replace("-", "_"))
    if value is None:
        return default
    return type(default)(value) if default is not None else value


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def _env_flag(name: str) -> bool:
    """A switch's ``ROOMCAST_*`` variable: 1/true/yes/on or 0/false/no/off (``0`` is off)."""
    value = os.environ.get("ROOMCAST_" + name.upper(), "").strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(
            f"ROOMCAST_{name.upper()}={value!r}: expected 1/true/yes/on or 0/false/no/off"
        )
    return value in _TRUE


def _env_tristate(name: str) -> bool | None:
    """A switch whose default depends on other settings: unset (or empty) is None."""
    return _env_flag(name) if os.environ.get("ROOMCAST_" + name.upper(), "").strip() else None


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


_LIMITS: tuple[tuple[str, type, str], ...] = (
    ("host", str, "address to bind"),
    ("port", int, "port of the WebSocket listener (and GET /healthz /readyz /metrics)"),
    ("max_message_size", int, "largest incoming message in bytes (larger: close 1009)"),
    (
        "send_buffer_limit",
        int,
        "bytes that may wait for one client before it is closed as slow (4008)",
    ),
    ("max_connections", int, "connections this process accepts (more: HTTP 503)"),
    (
        "shutdown_timeout",
        float,
        "seconds SIGTERM/SIGINT may take to close clients (1001) before aborting them",
    ),
    ("ping_interval", float, "seconds between protocol pings to each client (0: no heartbeat)"),
    ("rate_limit", float, "messages per second a client may send on average (0: no limit)"),
    ("rate_burst", int, "messages a client may send at once before --rate-limit applies"),
    ("max_rooms_per_connection", int, "rooms one connection may be in"),
    ("max_connections_per_user", int, "connections per user id in this process (0: no cap)"),
    (
        "pong_timeout",
        float,
        "a client silent for ping-interval + pong-timeout seconds is disconnected",
    ),
    ("stats_interval", float, "seconds between this instance's figures in $stats (0: none)"),
    ("max_rooms", int, "rooms with members this process holds (a join opening more: 1013)"),
    ("max_id_bytes", int, "longest room or user id in UTF-8 bytes"),
    (
        "api_max_connections",
        int,
        "connections the API port holds at once (more: HTTP 503); kept free of the "
        "WebSocket port's descriptor budget",
    ),
    (
        "api_header_timeout",
        float,
        "seconds from accept within which an API request's head must arrive (else 408)",
    ),
    (
        "api_body_timeout",
        float,
        "seconds after the head within which an API request's body must arrive (else 408)",
    ),
)
"""Flags of ServerConfig's limits: (field name, type, help); defaults come from ServerConfig."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so the docs and tests can read its help)."""
    from roomcast.server import ServerConfig

    defaults = ServerConfig()
    parser = argparse.ArgumentParser(prog="roomcast", description="roomcast WebSocket hub")
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the WebSocket server",
        description=(
            "Run a roomcast hub. Clients connect to ws://HOST:PORT/ws (or /ws/ROOM to join "
            "ROOM at once), with ?user_id=NAME, and speak the JSON protocol described in the "
            "README. GET /healthz and /readyz report liveness and readiness. Every option "
            "can also be set with an environment variable ROOMCAST_<OPTION>, e.g. "
            "ROOMCAST_PORT=9000."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, kind, text in _LIMITS:
        serve.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=_env(name, getattr(defaults, name)),
            help=text,
        )
    serve.add_argument(
        "--log-level",
        default=_env("log_level", "info"),
        choices=["debug", "info", "warning", "error"],
        help="least severe log level shown",
    )
    serve.add_argument(
        "--log-format",
        default=_env("log_format", "text"),
        choices=["text", "json"],
        help="'json' writes one JSON object per line",
    )
    serve.add_argument(
        "--api-port",
        type=int,
        default=_env("api_port", -1),
        help="port of the HTTP API (POST /api/publish, /healthz, /readyz, /metrics); "
        "-1 disables it",
    )
    serve.add_argument(
        "--api-key",
        default=_env("api_key", None),
        help="key POST /api/publish requires in the X-API-Key header; prefer the "
        "ROOMCAST_API_KEY variable, which other users cannot see in the process list",
    )
    serve.add_argument(
        "--redis-url",
        default=_env("redis_url", None),
        help="Redis shared by every instance of the hub (redis://[user:password@]host:port/db, "
        "rediss:// for TLS); without it the hub is in memory, in this process only. A URL "
        "with a password belongs in ROOMCAST_REDIS_URL",
    )
    serve.add_argument(
        "--channel-prefix",
        default=_env("channel_prefix", defaults.channel_prefix),
        help="prefix of the Redis channels; hubs with different prefixes share a Redis "
        "without seeing each other's messages",
    )
    auth = serve.add_argument_group(
        "authentication",
        "With --jwt-secret, --jwt-public-key or --jwt-jwks, every upgrade must present a JWT "
        "(Authorization: Bearer, the subprotocols 'bearer, TOKEN', or ?token=); its 'sub' "
        "claim is the user id and ?user_id= is ignored. Refusals get HTTP 401.",
    )
    auth.add_argument(
        "--jwt-secret",
        default=_env("jwt_secret", None),
        help="HMAC secret (HS256/384/512); prefer the ROOMCAST_JWT_SECRET variable",
    )
    auth.add_argument(
        "--jwt-public-key", default=_env("jwt_public_key", None), help="PEM file of a public key"
    )
    auth.add_argument("--jwt-jwks", default=_env("jwt_jwks", None), help="JWKS JSON file")
    auth.add_argument(
        "--jwt-algorithms",
        default=_env("jwt_algorithms", None),
        help="comma-separated allow-list (default: HS256 with a secret, RS256 otherwise)",
    )
    auth.add_argument("--jwt-audience", default=_env("jwt_audience", None))
    auth.add_argument("--jwt-issuer", default=_env("jwt_issuer", None))
    auth.add_argument(
        "--allowed-origins",
        default=_env("allowed_origins", None),
        help="comma-separated Origins browsers may connect from (others: HTTP 403); default: any",
    )
    auth.add_argument(
        "--token-grace",
        type=float,
        default=_env("token_grace", 30.0),
        help="seconds a client whose token expired gets to send a new one "
        '({"type": "auth", "token": ...}) before it is closed with 4001',
    )
    auth.add_argument(
        "--no-token-in-query",
        action="store_true",
        default=_env_flag("no_token_in_query"),
        help="refuse ?token= (query strings end up in access logs)",
    )
    serve.add_argument(
        "--echo",
        action="store_true",
        default=_env_flag("echo"),
        help="also serve /echo, which sends every message back (for protocol test suites "
        "such as Autobahn)",
    )
    presence = serve.add_mutually_exclusive_group()
    presence.add_argument(
        "--presence",
        dest="presence",
        action="store_true",
        default=_env_tristate("presence"),
        help="serve presence ($presence:ROOM rooms); default: on without --redis-url, off "
        "with it (cluster-wide presence keeps a roster in Redis and publishes every join "
        "and leave: 1.4-2.1x the handshake CPU)",
    )
    presence.add_argument(
        "--no-presence",
        dest="presence",
        action="store_false",
        default=argparse.SUPPRESS,  # (the default is --presence's: None, decided later)
        help="no presence at all",
    )
    serve.add_argument(
        "--no-demo",
        action="store_true",
        default=_env_flag("no_demo"),
        help="do not serve the demo page at / (/client.js is always served)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=_env("workers", 1),
        help="worker processes sharing the ports (SO_REUSEPORT), restarted if they die; "
        "more than 1 needs --redis-url, which makes them one hub",
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def _worker_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The arguments and environment of one worker: the supervisor's own settings, with the
    secrets (API key, Redis URL with its password) in the environment, not the process list."""
    argv: list[str] = []
    names = [name for name, _, _ in _LIMITS]
    for name in (*names, "log_level", "log_format", "api_port", "channel_prefix"):
        argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    optional = ("jwt_public_key", "jwt_jwks", "jwt_algorithms", "jwt_audience", "jwt_issuer")
    for name in (*optional, "allowed_origins"):
        if getattr(args, name) is not None:
            argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.no_token_in_query:
        argv.append("--no-token-in-query")
    for switch in ("echo", "no_demo"):
        if getattr(args, switch):
            argv.append("--" + switch.replace("_", "-"))
    if args.presence is not None:
        argv.append("--presence" if args.presence else "--no-presence")
    argv += ["--token-grace", str(args.token_grace)]
    env = dict(os.environ)
    for name in ("api_key", "redis_url", "jwt_secret"):
        value = getattr(args, name)
        if value is not None:
            env["ROOMCAST_" + name.upper()] = value
    return argv, env


def _authenticator(args: argparse.Namespace) -> Authenticator | None:
    """A JWTAuthenticator from the --jwt-* options, or None if none names a key."""
    from pathlib import Path

    from roomcast.auth import JWTAuthenticator

    keys: list[Any] = []
    if args.jwt_secret:
        keys.append(args.jwt_secret)
    if args.jwt_public_key:
        keys.append(Path(args.jwt_public_key).read_bytes())
    jwks = json.loads(Path(args.jwt_jwks).read_text()) if args.jwt_jwks else None
    if not keys and jwks is None:
        return None
    default = "HS256" if args.jwt_secret else "RS256"
    algorithms = [a.strip() for a in (args.jwt_algorithms or default).split(",") if a.strip()]
    return JWTAuthenticator(
        keys or None,
        jwks=jwks,
        algorithms=algorithms,
        audience=args.jwt_audience,
        issuer=args.jwt_issuer,
    )


def _configure_logging(level: str, style: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if style == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # picows logs every connection at INFO, and every write pause/resume of a slow client at
    # WARNING: too much for a server with 50k clients (roomcast counts what matters).
    if level != "debug":
        logging.getLogger("roomcast.picows").setLevel(logging.ERROR)


def _raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(args: argparse.Namespace) -> None:
    from roomcast.server import Server, ServerConfig

    config = ServerConfig(
        host=args.host,
        port=args.port,
        max_message_size=args.max_message_size,
        send_buffer_limit=args.send_buffer_limit,
        max_connections=args.max_connections,
        shutdown_timeout=args.shutdown_timeout,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        max_rooms_per_connection=args.max_rooms_per_connection,
        max_connections_per_user=args.max_connections_per_user,
        ping_interval=args.ping_interval,
        pong_timeout=args.pong_timeout,
        api_port=None if args.api_port < 0 else args.api_port,
        api_key=args.api_key,
        redis_url=args.redis_url,
        channel_prefix=args.channel_prefix,
        reuse_port=args.worker,
        echo=args.echo,
        presence=args.presence,
        demo=not args.no_demo,
        stats_interval=args.stats_interval,
        max_rooms=args.max_rooms,
        max_id_bytes=args.max_id_bytes,
        api_max_connections=args.api_max_connections,
        api_header_timeout=args.api_header_timeout,
        api_body_timeout=args.api_body_timeout,
        authenticator=_authenticator(args),
        token_in_query=not args.no_token_in_query,
        token_grace=args.token_grace,
        allowed_origins=(
            frozenset(o.strip() for o in args.allowed_origins.split(",") if o.strip())
            if args.allowed_origins
            else None
        ),
    )
    # Signals first: a SIGTERM that arrives while starting (connecting to Redis, say) then
    # stops the server cleanly once it is up, instead of killing the process.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = Server(config)
    await server.start()
    # Everything allocated so far lives as long as the process: keep the cyclic GC from
    # walking it again and again.
    gc.collect()
    gc.freeze()
    await stop.wait()
    began = time.monotonic()
    logging.getLogger("roomcast.server").info("shutting down")
    await server.stop()
    logging.getLogger("roomcast.server").info("stopped in %.2fs", time.monotonic() - began)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roomcast`` command."""
    try:
        parser = build_parser()
    except ValueError as exc:  # a ROOMCAST_* variable that does not parse
        raise SystemExit(f"roomcast: {exc}") from None
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and args.redis_url is None:
        parser.error(
            "--workers > 1 needs --redis-url: without Redis each worker would be a hub of its own"
        )
    try:
        _authenticator(args)  # fail now, with a message, on a bad key or algorithm list
    except (ValueError, OSError) as exc:
        parser.error(f"authentication options: {exc}")
    _configure_logging(args.log_level, args.log_format)
    _raise_open_file_limit()
    if args.workers > 1 and not args.worker:
        from roomcast.serve.supervisor import Supervisor

        worker_args, worker_env = _worker_command(args)
        supervisor = Supervisor(
            args.workers, worker_args, worker_env, shutdown_timeout=args.shutdown_timeout
        )
        return asyncio.run(supervisor.run())
    if args.worker:  # die with the supervisor, even a SIGKILLed one
        from roomcast.serve.supervisor import follow_supervisor

        follow_supervisor(args.shutdown_timeout)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is part of the server extra
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
