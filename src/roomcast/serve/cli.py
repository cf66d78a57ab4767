"""Command line: ``roomcast serve`` and ``roomcast genconfig``.

Every flag also reads a ``ROOMCAST_<FLAG>`` environment variable (``--max-message-size`` from
``ROOMCAST_MAX_MESSAGE_SIZE``), and a ``--config`` file's key (``max_message_size``); a
variable wins over the file, a flag given on the command line over both.  The options are
declared once, in ``roomcast.serve.config`` and ``roomcast.serve.options``.
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
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from roomcast import __version__
from roomcast.auth import Authenticator
from roomcast.rules import Rules
from roomcast.serve.config import ServerConfig, refuse_contradictions
from roomcast.serve.config_file import (
    WORKER_NAMESPACES_VARIABLE,
    ConfigFile,
    read_config_file,
    worker_namespaces,
)
from roomcast.serve.options import OptionError, add_options, config_values, to_argv
from roomcast.serve.supervisor import WORKER_SLOT_VARIABLE
from roomcast.serve.workers import WorkerIdentity

__all__ = ["main"]


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        worker = os.environ.get(WORKER_SLOT_VARIABLE)
        if worker is not None:
            entry["worker"] = worker
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr (exit status 2), like every
    other refusal of ``roomcast serve``: the option and what to do, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"roomcast: error: {message}\n")


def build_parser(
    environ: Mapping[str, str] | None = None, file: ConfigFile | None = None
) -> argparse.ArgumentParser:
    """The argument parser, its defaults read from ``environ`` (``os.environ``) over those
    of ``file``.

    Raises:
        OptionError: a ``ROOMCAST_*`` variable does not parse (the message names it).
    """
    parser = _Parser(prog="roomcast", description="roomcast WebSocket hub")
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the WebSocket server",
        description=(
            "Run a roomcast hub. Clients connect to ws://HOST:PORT/ws (or /ws/ROOM to join "
            "ROOM at once), with ?user_id=NAME, and speak the JSON protocol described in the "
            "docs. GET /healthz and /readyz report liveness and readiness. Every option "
            "can also be set with an environment variable ROOMCAST_<OPTION>, e.g. "
            "ROOMCAST_PORT=9000, and in a --config file; a flag wins over its variable, "
            "which wins over the file. With --jwt-secret, "
            "--jwt-public-key or --jwt-jwks, every upgrade must present a JWT "
            "(Authorization: Bearer, the subprotocols 'bearer, TOKEN', or ?token=); its "
            "'sub' claim is the user id and ?user_id= is ignored."
        ),
    )
    environ = os.environ if environ is None else environ
    if file is None:
        add_options(serve, ServerConfig, environ)
    else:
        add_options(serve, ServerConfig, environ, file.values, file.path)
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(namespaces=None, namespace_tables=None)
    genconfig = commands.add_parser(
        "genconfig",
        help="write a commented config file",
        description=(
            "Write a TOML file for roomcast serve --config: every option, commented out at its "
            "default with its help, and an example of namespaces."
        ),
    )
    genconfig.add_argument("path", nargs="?", default="-", help="where (default: - for stdout)")
    genconfig.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


def parse_arguments(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """The command line over the variables of ``environ`` (``os.environ``) over the
    ``--config`` (or ``ROOMCAST_CONFIG``) file; ``namespaces`` and ``namespace_tables`` are the
    file's, or for a worker its supervisor's.

    Raises:
        OptionError: a variable does not parse, or the file cannot be used (one line).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    # The file's values are the parser's defaults, so it is read before the real parse (which
    # may be --help, which should show them); the command line is glanced at for it.
    glance = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    glance.add_argument("command", nargs="?")
    glance.add_argument("--config", default=environ.get("ROOMCAST_CONFIG"))
    glance.add_argument("--worker", action="store_true")
    try:
        seen, _ = glance.parse_known_args(argv)
    except argparse.ArgumentError:  # (``--config`` without a value: the parse says so)
        seen = argparse.Namespace(command=None)
    file = None
    if seen.command == "serve" and seen.config and not seen.worker:
        file = read_config_file(seen.config, ServerConfig)
    args = build_parser(environ, file).parse_args(argv)
    if args.command != "serve":
        return args
    if args.worker:  # (the supervisor read the file; its options came in argv and environ)
        args.namespaces, args.namespace_tables = worker_namespaces(environ)
    elif file is not None:
        args.namespaces, args.namespace_tables = file.namespaces, file.tables
    return args


def _worker_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The arguments and environment of one worker: the supervisor's own settings, with the
    secrets (API key, Redis URL with its password, JWT secret) in the environment, not the
    process list; the file's namespaces as JSON (``config_file.WORKER_NAMESPACES_VARIABLE``):
    a worker does not read the file, which may have changed since."""
    argv, secrets = to_argv(args, ServerConfig, skip=frozenset({"workers", "config"}))
    env = {**os.environ, **secrets}
    env.pop(WORKER_NAMESPACES_VARIABLE, None)
    if args.namespace_tables is not None:
        env[WORKER_NAMESPACES_VARIABLE] = json.dumps(args.namespace_tables)
    return argv, env


def config_from(args: argparse.Namespace) -> ServerConfig:
    """The server's settings from parsed arguments."""
    namespaces = args.namespaces
    return ServerConfig(
        **config_values(args, ServerConfig),
        reuse_port=args.worker,
        authenticator=_authenticator(args),
        worker=WorkerIdentity.from_environment(os.environ) if args.worker else None,
        rules=None if namespaces is None else Rules(namespaces, claim=args.capabilities_claim),
    )


def _authenticator(args: argparse.Namespace) -> Authenticator | None:
    """A JWTAuthenticator from the --jwt-* options, or None if none names a key.

    Raises:
        OptionError: the key does not fit the algorithms (an HMAC secret with RS256, a public
            key with HS256).
        ValueError: ``JWTAuthenticator`` refuses the algorithm list.
        OSError: a key file cannot be read.
    """
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
    _refuse_mismatched_key(args, algorithms)
    return JWTAuthenticator(
        keys or None,
        jwks=jwks,
        algorithms=algorithms,
        audience=args.jwt_audience,
        issuer=args.jwt_issuer,
        leeway=args.jwt_leeway,
    )


_HMAC = frozenset({"HS256", "HS384", "HS512"})


def _refuse_mismatched_key(args: argparse.Namespace, algorithms: list[str]) -> None:
    """A key of one kind with algorithms of the other would refuse every token: say so now.
    (A list mixing both kinds is ``JWTAuthenticator``'s to refuse.)"""
    hmac = {a.upper() in _HMAC for a in algorithms}
    listed = ",".join(algorithms)
    if args.jwt_secret and hmac == {False}:
        raise OptionError(
            f"--jwt-secret is an HMAC key, which --jwt-algorithms {listed} cannot use: give "
            "--jwt-public-key or --jwt-jwks for it, or --jwt-algorithms HS256"
        )
    if (args.jwt_public_key or args.jwt_jwks) and hmac == {True}:
        flag = "--jwt-public-key" if args.jwt_public_key else "--jwt-jwks"
        raise OptionError(
            f"{flag} is for public-key algorithms, not --jwt-algorithms {listed}: give "
            "--jwt-algorithms RS256 (or ES256, ...), or --jwt-secret for HMAC"
        )


def _configure_logging(level: str, style: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if style == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        # A --workers server's lines say which worker wrote them.
        worker = os.environ.get(WORKER_SLOT_VARIABLE)
        label = "" if worker is None else f"worker {worker} "
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {label}%(name)s: %(message)s")
        )
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
    from roomcast.serve.server import Server

    config = config_from(args)
    # Signals first: a SIGTERM that arrives while starting (connecting to Redis, say) then
    # stops the server cleanly once it is up, instead of killing the process.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        server = Server(config)
    except ValueError as exc:  # the open-file limit leaves no room for clients
        print(f"roomcast: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        await server.start()
    except OptionError as exc:  # a port is taken
        print(f"roomcast: error: {exc}", file=sys.stderr)
        await server.stop()
        raise SystemExit(2) from None
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
        args = parse_arguments(argv)
    except OptionError as exc:  # a ROOMCAST_* variable that does not parse, a bad --config
        print(f"roomcast: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "genconfig":
        from roomcast.serve.config_template import write_template

        return write_template(args.path, force=args.force)
    parser = _Parser(prog="roomcast")  # (its error(): one line, exit status 2)
    if args.workers > 1 and args.redis_url is None:
        parser.error(
            "--workers > 1 needs --redis-url: without Redis each worker would be a hub of its own"
        )
    try:
        # Fail now, with one line, on a bad key or algorithm list or contradicting options.
        refuse_contradictions(config_from(args))
    except OptionError as exc:
        print(f"roomcast: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        parser.error(f"authentication options: {exc}")
    _configure_logging(args.log_level, args.log_format)
    _raise_open_file_limit()
    if args.workers > 1 and not args.worker:
        from roomcast.serve.supervisor import Supervisor, hold_ports

        ports = [args.port] + ([args.api_port] if args.api_port and args.api_port > 0 else [])
        try:  # (the locks' descriptors stay open until the process ends)
            hold_ports(args.host, ports)
        except OSError:
            print(
                f"roomcast: error: --port {args.port}: another roomcast serve --workers already "
                f"serves {args.host}:{'/'.join(map(str, ports))}; stop it or choose another "
                "--port (its workers would share the port and split the hub)",
                file=sys.stderr,
            )
            return 2
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
