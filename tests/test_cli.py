"""``roomcast serve`` as a user runs it: a real process, real clients, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest
from websockets.exceptions import ConnectionClosed

from roomcast import CloseCode
from roomcast.serve.cli import _worker_command, build_parser
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


def test_a_switch_variable_that_does_not_parse_stops_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roomcast.serve.cli", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ROOMCAST_ECHO": "maybe"},
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "roomcast: ROOMCAST_ECHO='maybe': expected 1/true/yes/on or 0/false/no/off"
    )


@pytest.mark.parametrize(
    ("flags", "passed"),
    [([], []), (["--presence"], ["--presence"]), (["--no-presence"], ["--no-presence"])],
)
def test_workers_get_the_supervisors_switches(flags: list[str], passed: list[str]) -> None:
    args = build_parser().parse_args(["serve", "--no-demo", "--stats-interval", "2", *flags])
    argv, _ = _worker_command(args)
    assert "--no-demo" in argv and argv[argv.index("--stats-interval") + 1] == "2.0"
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
            while b"listening" not in await process.stderr.readline():
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
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"delivered": 500}\n')
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
