"""``roomcast serve`` as a user runs it: a real process, real clients, real signals."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from roomcast import CloseCode
from roomcast.serve.cli import _worker_command, build_parser, config_from, main
from roomcast.serve.config import ServerConfig, http_url
from roomcast.serve.options import COMMAND_LINE, Option, options
from roomcast.serve.workers import WorkerIdentity
from roomcast.testing import RedisServer
from tests.serve_process import RawClient, start_serve, stop_serve
from tests.support import connect, recv, seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_explains_flags_and_environment() -> None:
    """serve --help names each limit and the ROOMCAST_* variables."""
    result = subprocess.run(
        [sys.executable, "-m", "roomcast.serve.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    text = result.stdout
    for flag in (
        "--host",
        "--port",
        "--log-level",
        "--log-format",
        "--max-message-size",
        "--send-buffer-limit",
        "--max-connections",
        "--shutdown-timeout",
    ):
        assert flag in text
    assert "ROOMCAST_" in text


def test_environment_sets_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """ROOMCAST_PORT and friends change the defaults; flags still win."""
    monkeypatch.setenv("ROOMCAST_PORT", "9123")
    monkeypatch.setenv("ROOMCAST_SHUTDOWN_TIMEOUT", "2.5")
    args = build_parser().parse_args(["serve"])
    assert args.port == 9123 and args.shutdown_timeout == 2.5
    assert build_parser().parse_args(["serve", "--port", "9"]).port == 9


@pytest.mark.parametrize(
    ("value", "on"), [("1", True), ("yes", True), ("on", True), ("0", False), ("off", False)]
)
def test_switches_read_their_variables_strictly(
    monkeypatch: pytest.MonkeyPatch, value: str, on: bool
) -> None:
    """ROOMCAST_ECHO=0 means off (not "a non-empty string, so on")."""
    for name in ("ECHO", "PRESENCE", "NO_DEMO", "NO_TOKEN_IN_QUERY"):
        monkeypatch.setenv(f"ROOMCAST_{name}", value)
    args = build_parser().parse_args(["serve"])
    assert (args.echo, args.presence, args.no_demo, args.no_token_in_query) == (on,) * 4


def test_presence_defaults_to_the_hub_kind_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, presence is decided by --redis-url (None); --presence / --no-presence decide."""
    monkeypatch.delenv("ROOMCAST_PRESENCE", raising=False)
    parse = build_parser().parse_args
    assert parse(["serve"]).presence is None
    assert parse(["serve", "--presence"]).presence is True
    assert parse(["serve", "--no-presence"]).presence is False
    monkeypatch.setenv("ROOMCAST_PRESENCE", "")  # set but empty: still undecided
    assert build_parser().parse_args(["serve"]).presence is None


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ROOMCAST_ECHO", "maybe", "expected 1/true/yes/on or 0/false/no/off"),
        ("ROOMCAST_MAX_ROOMS", "lots", "expected a whole number"),
        ("ROOMCAST_MAX_ROOMS", "1.5", "expected a whole number"),
        ("ROOMCAST_RATE_LIMIT", "fast", "expected a number"),
        ("ROOMCAST_LOG_LEVEL", "loud", "expected one of debug, info, warning, error"),
    ],
)
def test_a_variable_that_does_not_parse_stops_with_one_line(
    variable: str, value: str, says: str
) -> None:
    """A ROOMCAST_* value that does not fit its option: exit 2 and one line that names the
    variable, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "roomcast.serve.cli", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, variable: value},
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"roomcast: error: {variable}={value!r}") and says in line


@pytest.mark.parametrize(
    ("flags", "passed"),
    [([], []), (["--presence"], ["--presence"]), (["--no-presence"], ["--no-presence"])],
)
def test_workers_get_the_supervisors_switches(flags: list[str], passed: list[str]) -> None:
    args = build_parser().parse_args(["serve", "--no-demo", "--stats-interval", "2", *flags])
    argv, _ = _worker_command(args)
    assert "--no-demo" in argv and "--stats-interval=2.0" in argv
    assert [a for a in argv if a.endswith("presence")] == passed


async def test_sigterm_closes_clients_with_1001_and_exits_zero() -> None:
    """As a real process on uvloop: the publish API reaches 500 clients; a SIGTERM closes
    every one with 1001 and the process exits 0 within its deadline."""
    port, api_port = free_port(), free_port()
    command = ["serve", "--port", str(port), "--api-port", str(api_port), "--log-format", "json"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast.serve.cli",
        *command,
        "--shutdown-timeout",
        "5",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ROOMCAST_API_KEY": "k"},
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(seconds(20)):
            while b"WebSocket clients:" not in await process.stderr.readline():
                pass
        # 500 clients: the drain closes them in batches within the deadline.
        clients = list(
            await asyncio.gather(
                *(connect(f"ws://127.0.0.1:{port}/ws/r?user_id=u{i}") for i in range(500))
            )
        )
        body = b'{"room": "r", "data": "hello"}'
        reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
        writer.write(
            b"POST /api/publish HTTP/1.1\r\nX-API-Key: k\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        async with asyncio.timeout(seconds(5)):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["delivered"] == 500
        for client in clients:
            assert '"hello"' in str(await recv(client))
        process.send_signal(signal.SIGTERM)
        for client in clients:
            with pytest.raises(ConnectionClosed):
                await recv(client, timeout_units=10)
            assert client.close_code == CloseCode.GOING_AWAY
        async with asyncio.timeout(seconds(10)):
            assert await process.wait() == 0
        rest = await process.stderr.read()
        assert b'"msg": "stopped in' in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def serve_refusal(*flags: str, env: dict[str, str] | None = None) -> str:
    """The one line ``roomcast serve FLAGS`` writes on stderr when it refuses to start
    (exit status 2, nothing else: no traceback, no usage block); a later ``--port`` wins over
    the free one given first."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    result = subprocess.run(
        [sys.executable, "-m", "roomcast.serve.cli", "serve", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "ROOMCAST_API_KEY": "k", **(env or {})},
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    return line


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--max-connections", "0"], "argument --max-connections: must be 1 or more, not 0"),
        (["--rate-burst", "-1"], "argument --rate-burst: must be 1 or more, not -1"),
        (["--history-size", "-1"], "argument --history-size: must be 0 (off) or more, not -1"),
        (["--send-buffer-limit", "0"], "argument --send-buffer-limit: must be 1 or more, not 0"),
        (["--close-timeout", "0"], "argument --close-timeout: must be more than 0, not 0"),
        (["--rate-limit", "-5"], "argument --rate-limit: must be 0 (off) or more, not -5"),
        (["--workers", "0"], "argument --workers: must be 1 or more, not 0"),
        (
            ["--redis-url", "localhost:6379"],
            "argument --redis-url: a Redis URL starts with redis:// (rediss:// for TLS, "
            "unix:// for a socket), e.g. redis://localhost:6379",
        ),
    ],
)
def test_a_number_or_url_out_of_bounds_stops_with_one_line(flags: list[str], line: str) -> None:
    """A limit that is negative (or 0 where 0 does not mean off) and a Redis URL without a
    scheme are refused before serving, in one line that names the flag and what it takes."""
    assert serve_refusal(*flags) == f"roomcast: error: {line}"


def test_a_limit_in_a_variable_is_checked_too() -> None:
    """ROOMCAST_MAX_CONNECTIONS=0 is refused like --max-connections 0, naming the variable."""
    assert serve_refusal(env={"ROOMCAST_MAX_CONNECTIONS": "0"}) == (
        "roomcast: error: ROOMCAST_MAX_CONNECTIONS='0' is not a valid --max-connections "
        "(must be 1 or more, not 0)"
    )


def test_a_redis_url_in_a_variable_is_not_repeated() -> None:
    """A ROOMCAST_REDIS_URL without a scheme is refused without echoing it (it may hold a
    password)."""
    line = serve_refusal(env={"ROOMCAST_REDIS_URL": "user:hunter2@localhost:6379"})
    assert line.startswith("roomcast: error: ROOMCAST_REDIS_URL is not a valid --redis-url (")
    assert "hunter2" not in line


@pytest.mark.parametrize(
    "flags",
    [
        ["--rate-limit", "0"],
        ["--history-size", "0"],
        ["--ping-interval", "0"],
        ["--stats-interval", "0"],
        ["--max-connections-per-user", "0"],
    ],
)
def test_zero_stays_valid_where_it_means_off(flags: list[str]) -> None:
    """0 is accepted where the option's help says what 0 turns off."""
    build_parser({}).parse_args(["serve", *flags])


def test_the_api_port_cannot_be_the_websocket_port() -> None:
    """--api-port equal to --port is refused, with a free neighbour to use instead."""
    port = free_port()
    assert serve_refusal("--port", str(port), "--api-port", str(port)) == (
        f"roomcast: error: --api-port {port} is also --port: give the API a port of its own, "
        f"e.g. --api-port {port + 1}"
    )


def test_an_api_port_without_a_key_is_refused() -> None:
    """--api-port without a key would answer every publish 401: refused at start-up, saying
    which variable to set."""
    line = serve_refusal("--api-port", "0", env={"ROOMCAST_API_KEY": ""})
    assert line == (
        "roomcast: error: --api-port needs a key: set ROOMCAST_API_KEY (or --api-key), which "
        "publishers then send in the X-API-Key header"
    )


@pytest.mark.parametrize("flag", ["--port", "--api-port"])
def test_a_port_in_use_stops_with_one_line(flag: str) -> None:
    """A port another process holds: exit 2 and one line naming the flag, no traceback."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        others = ["--api-port", "0"] if flag == "--port" else ["--port", "0"]
        line = serve_refusal(flag, str(port), *others)
    assert line == (
        f"roomcast: error: {flag} {port}: 127.0.0.1:{port} is already in use by another "
        f"process; stop it or choose another {flag}"
    )


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--jwt-secret", "s" * 32, "--jwt-algorithms", "RS256"],
            "--jwt-secret is an HMAC key, which --jwt-algorithms RS256 cannot use: give "
            "--jwt-public-key or --jwt-jwks for it, or --jwt-algorithms HS256",
        ),
        (
            ["--jwt-public-key", "/dev/null", "--jwt-algorithms", "HS256"],
            "--jwt-public-key is for public-key algorithms, not --jwt-algorithms HS256: give "
            "--jwt-algorithms RS256 (or ES256, ...), or --jwt-secret for HMAC",
        ),
        (
            ["--jwt-jwks", "JWKS", "--jwt-algorithms", "HS512"],
            "--jwt-jwks is for public-key algorithms, not --jwt-algorithms HS512: give "
            "--jwt-algorithms RS256 (or ES256, ...), or --jwt-secret for HMAC",
        ),
    ],
)
def test_a_key_of_the_wrong_kind_stops_with_one_line(
    tmp_path: Any, flags: list[str], line: str
) -> None:
    """An HMAC secret with public-key algorithms, or a public key with HMAC ones, would refuse
    every token: refused at start-up instead."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    flags = [str(jwks) if word == "JWKS" else word for word in flags]
    assert serve_refusal(*flags) == f"roomcast: error: {line}"


def test_bad_authentication_options_stop_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    """An unsafe algorithm list or a missing key file is refused before serving (exit 2)."""
    from roomcast.serve.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--jwt-secret", "x" * 32, "--jwt-algorithms", "HS256,RS256"])
    assert exit_info.value.code == 2
    assert "key confusion" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--jwt-public-key", "/nonexistent/key.pem"])
    assert "authentication options" in capsys.readouterr().err


def _sample(opt: Option) -> tuple[list[str], str, Any]:
    """A value other than the default for ``opt``: its command-line words, its variable's
    text, and the ServerConfig value both must give."""
    flag = opt.flag
    if opt.kind in ("switch", "off-switch"):
        return [flag], "1", opt.kind == "switch"
    if opt.kind == "either":
        return ["--no-" + flag[2:]], "0", False
    if opt.kind == "origins":
        return (
            [flag, "https://a.example,https://b.example"],
            "https://a.example,https://b.example",
            (frozenset({"https://a.example", "https://b.example"})),
        )
    if opt.kind == "redis-url":
        return [flag, "redis://sample:1"], "redis://sample:1", "redis://sample:1"
    if opt.kind is http_url:
        return [flag, "http://sample:1/hook"], "http://sample:1/hook", "http://sample:1/hook"
    if opt.name == "hook_failure_policy":
        return [flag, "allow"], "allow", "allow"
    if opt.kind in ("port", "port-or-off"):
        return [flag, "9999"], "9999", 9999
    if opt.kind is int:
        return [flag, str(opt.default + 7)], str(opt.default + 7), opt.default + 7
    if opt.kind is float:
        return [flag, str(opt.default + 0.5)], str(opt.default + 0.5), opt.default + 0.5
    return [flag, "sample-value"], "sample-value", "sample-value"


CONFIG_OPTIONS = [opt for opt in options(ServerConfig) if opt not in COMMAND_LINE]


@pytest.mark.parametrize("opt", CONFIG_OPTIONS, ids=lambda opt: opt.name)
def test_every_config_option_round_trips_through_flags_variables_and_workers(
    opt: Option,
) -> None:
    """Each ServerConfig option gives the same config from its flag, from its ROOMCAST_*
    variable, and from the argv (and environment) a --workers supervisor hands a worker;
    secrets never appear in that argv."""
    words, text, expected = _sample(opt)
    from_flag = config_from(build_parser({}).parse_args(["serve", *words]))
    from_variable = config_from(build_parser({opt.variable: text}).parse_args(["serve"]))
    assert getattr(from_flag, opt.name) == expected
    assert getattr(from_variable, opt.name) == expected
    assert getattr(config_from(build_parser({}).parse_args(["serve"])), opt.name) == getattr(
        ServerConfig(), opt.name
    )
    argv, env = _worker_command(build_parser({}).parse_args(["serve", *words, "--workers", "2"]))
    worker = config_from(build_parser(env).parse_args(["serve", *argv, "--worker"]))
    assert getattr(worker, opt.name) == expected
    if opt.secret:
        assert text not in argv and env[opt.variable] == text
    assert worker.reuse_port


def test_every_server_config_field_is_an_option_or_said_not_to_be() -> None:
    """No ServerConfig field can be forgotten by the command line: each is an option, except
    the ones it builds itself (rules: from the --config file's namespaces; worker: from the
    supervisor's variables)."""
    fields = {field.name for field in dataclasses.fields(ServerConfig)}
    built = {"authenticator", "reuse_port", "rules", "worker"}
    assert fields - {opt.name for opt in CONFIG_OPTIONS} == built


def test_a_worker_takes_its_identity_from_the_supervisors_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker knows which of how many it is (for /metrics and /readyz); variables that do
    not say so stop it with one line, exit 2."""
    monkeypatch.setenv("ROOMCAST_WORKER_SLOT", "1")
    monkeypatch.setenv("ROOMCAST_WORKER_COUNT", "2")
    monkeypatch.setenv("ROOMCAST_WORKER_GROUP", "7-ab")
    args = build_parser().parse_args(["serve", "--worker"])
    assert config_from(args).worker == WorkerIdentity(1, 2, "7-ab")
    assert config_from(build_parser().parse_args(["serve"])).worker is None
    monkeypatch.setenv("ROOMCAST_WORKER_SLOT", "2")
    assert main(["serve", "--worker"]) == 2
    assert "leave them unset" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--port", "65601"], ["--api-port", "70000"], ["--port", "x"]])
def test_a_port_out_of_range_is_refused(flags: list[str]) -> None:
    """A port past 65535 is an error, not a different port (the kernel takes it modulo)."""
    with pytest.raises(SystemExit) as refused:
        build_parser({}).parse_args(["serve", *flags])
    assert refused.value.code == 2


def test_a_value_starting_with_a_dash_reaches_the_workers() -> None:
    """Workers get options as --flag=value, so a value may start with a dash."""
    args = build_parser({}).parse_args(["serve", "--channel-prefix=-x", "--workers", "2"])
    argv, env = _worker_command(args)
    worker = config_from(build_parser(env).parse_args(["serve", *argv, "--worker"]))
    assert worker.channel_prefix == "-x"


def test_choices_in_variables_are_case_insensitive() -> None:
    """ROOMCAST_LOG_LEVEL=DEBUG is debug, as --log-level would not take it but a person would
    write it."""
    assert build_parser({"ROOMCAST_LOG_LEVEL": "DEBUG"}).parse_args(["serve"]).log_level == "debug"


@pytest.mark.parametrize(
    "opt",
    [opt for opt in options(ServerConfig) if opt.kind in (int, float)],
    ids=lambda opt: opt.name,
)
def test_zero_means_off_exactly_where_the_help_says_so(opt: Option) -> None:
    """A number option takes 0 if and only if its help says what 0 turns off."""
    assert opt.off_at_zero == ("0: " in opt.help)
    parse = build_parser({}).parse_args
    if opt.off_at_zero:
        parse(["serve", opt.flag, "0"])
    else:
        with pytest.raises(SystemExit):
            parse(["serve", opt.flag, "0"])


WRONG_KEY = {
    "error": "missing or wrong API key: send the key roomcast serve was given (--api-key or "
    "ROOMCAST_API_KEY) in the X-API-Key header",
    "header": "X-API-Key",
}


async def test_a_request_without_the_key_is_told_which_header_carries_it() -> None:
    """A publish or history read without the key, or with a wrong one, gets 401 and a body
    naming the X-API-Key header."""
    server, _, http = await start_serve()
    try:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer k"}):
            publish = await http.post("/api/publish", json={"data": 1}, headers=headers)
            history = await http.get("/api/history?room=r", headers=headers)
            for response in (publish, history):
                assert (response.status_code, response.json()) == (401, WRONG_KEY)
    finally:
        await stop_serve(server, http)


async def raw_answer(port: int, *parts: bytes) -> bytes:
    """What the server writes back, to its end of stream, when sent ``parts`` one by one (a
    pause between them, so that each likely arrives in a read of its own)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        async with asyncio.timeout(seconds(5)):
            return await reader.read()
    finally:
        writer.close()


async def test_a_post_to_the_websocket_port_says_where_the_publish_api_is() -> None:
    """POST (PUT, DELETE) on the WebSocket port: 405 with a JSON body naming the API port,
    whether the method comes in pieces or the body after the head; GETs, upgrades and
    requests that are not HTTP are answered as before."""
    server, port, http = await start_serve()
    api_port = http.base_url.port
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as ws_port:
            response = await ws_port.post(
                "/api/publish", json={"data": 1}, headers={"X-API-Key": "k"}
            )
            assert (response.status_code, response.headers["allow"]) == (405, "GET")
            assert response.json() == {
                "error": "this port takes WebSocket upgrades and GETs, not POST; POST "
                f"/api/publish is served on the API port, {api_port} (--api-port)",
                "api_port": api_port,
            }
            assert (await ws_port.get("/healthz")).status_code == 200
            assert "not DELETE" in (await ws_port.delete("/x")).json()["error"]
        head = b"PUT /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n"
        answer = await raw_answer(port, head[:2], head[2:], b'{"data":1')
        assert answer.startswith(b"HTTP/1.1 405 ") and b"not PUT" in answer
        assert (await raw_answer(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400")
        client = await RawClient.connect(port, "/ws/r?user_id=a")
        client.abort()
    finally:
        await stop_serve(server, http)


def serve_help(env: dict[str, str]) -> dict[str, str]:
    """``roomcast serve --help`` as a real process, each option's flag -> its help (wrapped
    lines joined), with ``env`` as the only ROOMCAST_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    result = subprocess.run(
        [sys.executable, "-m", "roomcast.serve.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**base, "COLUMNS": "100", **env},
    )
    entries: dict[str, str] = {}
    flag = ""
    for line in result.stdout.split("\noptions:\n", 1)[1].splitlines():
        if line.startswith("  -"):  # "  --port PORT   help..." or "  --redis-url REDIS_URL"
            words, _, help_text = line.strip().partition("  ")
            flag = words.split()[0].rstrip(",")
            flag = "--help" if flag == "-h" else flag
            entries[flag] = help_text.strip()
        elif line.startswith("    ") and flag:
            entries[flag] = f"{entries[flag]} {line.strip()}".strip()
        else:
            flag = ""
    return entries


def test_help_lists_every_option_with_help_and_one_true_default() -> None:
    """serve --help: every option has help; a default is shown once, as the value in force
    (never "None", never beside a default written in words)."""
    entries = serve_help({})
    declared = {opt.flag for opt in options(ServerConfig)}
    opposites = {"--no-" + opt.flag[2:] for opt in options(ServerConfig) if opt.kind == "either"}
    assert set(entries) == declared | {"--help"} | opposites
    for flag, help_text in entries.items():
        assert help_text, f"{flag} has no help"
        assert "None" not in help_text and help_text.count("default") <= 1, help_text
    for opt in options(ServerConfig):
        if opt.default is not None and opt.kind not in ("switch", "off-switch", "either"):
            assert entries[opt.flag].endswith(f"(default: {opt.default})"), opt.flag
    assert entries["--api-port"].endswith("off unless given (-1: off)")


def test_help_shows_the_defaults_the_variables_set() -> None:
    """With ROOMCAST_* variables set, --help shows the value they give, naming the variable,
    and never a secret's value."""
    entries = serve_help(
        {
            "ROOMCAST_PORT": "9000",
            "ROOMCAST_ECHO": "1",
            "ROOMCAST_API_KEY": "sekrit",
            "ROOMCAST_ALLOWED_ORIGINS": "https://b.example,https://a.example",
        }
    )
    assert entries["--port"].endswith("(default: 9000, from ROOMCAST_PORT)")
    assert entries["--echo"].endswith("(now on, from ROOMCAST_ECHO)")
    assert entries["--api-key"].endswith("(set by ROOMCAST_API_KEY)")
    assert entries["--allowed-origins"].endswith(
        "(default: https://a.example,https://b.example, from ROOMCAST_ALLOWED_ORIGINS)"
    )
    assert "sekrit" not in " ".join(entries.values())
    for flag, help_text in entries.items():
        assert help_text.count("default") <= 1, flag


_ROOT = Path(__file__).resolve().parents[2]


async def test_the_serve_script_takes_its_address_from_roomcast_variables() -> None:
    """``./scripts/serve`` honours ROOMCAST_HOST/ROOMCAST_PORT (HOST/PORT win when set), and
    starts without installing anything when the venv already has what it needs."""
    root = _ROOT
    port = free_port()
    env = {**os.environ, "ROOMCAST_PORT": str(port), "ROOMCAST_HOST": "127.0.0.1"}
    env.pop("PORT", None)
    env.pop("HOST", None)
    process = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
        [str(root / "scripts" / "serve"), "--log-level", "warning"],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(200):
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("scripts/serve did not listen on ROOMCAST_PORT")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        if process.stderr is not None:
            errors = process.stderr.read().decode()
            process.stderr.close()
            assert "pip" not in errors.lower(), errors  # (nothing was installed)


async def test_start_up_says_what_runs(shared_redis: RedisServer) -> None:
    """The first lines name both addresses (with the demo page), the broker without its
    credentials (and that the database number does not separate hubs), authentication,
    presence, history and the settings changed from their defaults; no secret appears."""
    port, api_port = free_port(), free_port()
    url = shared_redis.url.replace("redis://", "redis://:hunter2@") + "/3"
    process = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
        [
            sys.executable,
            "-m",
            "roomcast.serve.cli",
            "serve",
            "--port",
            str(port),
            "--api-port",
            str(api_port),
            "--max-connections",
            "5000",
            "--log-level",
            "info",
        ],
        env={**os.environ, "ROOMCAST_API_KEY": "k3y", "ROOMCAST_REDIS_URL": url},
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(seconds(20)):
            while not any("settings changed" in line for line in lines):
                raw = await asyncio.to_thread(process.stderr.readline)
                assert raw, "roomcast serve ended: " + "".join(lines)
                lines.append(raw.decode())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        process.stderr.close()
    text = "".join(lines)
    assert (
        f"WebSocket clients: ws://127.0.0.1:{port}/ws (demo page: http://127.0.0.1:{port}/)" in text
    )
    assert f"HTTP API: http://127.0.0.1:{api_port} (POST /api/publish" in text
    assert f"broker: Redis at redis://127.0.0.1:{shared_redis.port}, channel prefix 'ws'" in text
    assert "ignores the database number" in text
    assert "authentication: none" in text and "presence: off" in text
    assert "history: 100 messages / 300 s per room, in Redis" in text
    assert "settings changed from the defaults: --max-connections 5000, --api-key (set)" in text
    assert "hunter2" not in text and "k3y" not in text


def test_a_workers_log_lines_say_which_worker_wrote_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from roomcast.serve import cli

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    monkeypatch.setenv("ROOMCAST_WORKER_SLOT", "1")
    try:
        for style in ("text", "json"):
            cli._configure_logging("info", style)
            logging.getLogger("roomcast.server").info("hello")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    text, json_line = capsys.readouterr().err.splitlines()[-2:]
    assert " INFO worker 1 roomcast.server: hello" in text
    assert json.loads(json_line)["worker"] == "1"
