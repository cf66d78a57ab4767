"""``roomcast serve --config FILE`` and ``roomcast genconfig`` as a user runs them: precedence
file < ROOMCAST_* variable < flag, one line for a broken file, workers given the namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from roomcast.serve.cli import _worker_command, config_from, parse_arguments
from roomcast.serve.config import ServerConfig, http_url
from roomcast.serve.config_file import WORKER_NAMESPACES_VARIABLE
from roomcast.serve.options import COMMAND_LINE, Option, options
from tests.redis_support import RedisServer, free_port
from tests.support import eventually, seconds

CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}


def roomcast(*words: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast.serve.cli", *words],
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN, **(env or {})},
    )


def written(tmp_path: Path, text: str) -> str:
    path = tmp_path / "roomcast.toml"
    path.write_text(text)
    return str(path)


def test_file_then_variable_then_flag(tmp_path: Path) -> None:
    """A file's value replaces the default; a ROOMCAST_* variable replaces the file's; a
    flag replaces both, for numbers, switches (``demo = false`` is ``--no-demo``) and the
    three-way presence alike."""
    path = written(tmp_path, "port = 1001\ndemo = false\npresence = false\nlog_level = 'debug'\n")

    def config(*flags: str, **env: str) -> tuple[Any, ...]:
        args = parse_arguments(["serve", "--config", path, *flags], env)
        server = config_from(args)
        return server.port, server.demo, server.presence, args.log_level

    assert config() == (1001, False, False, "debug")
    variables = {"ROOMCAST_PORT": "1002", "ROOMCAST_NO_DEMO": "0", "ROOMCAST_PRESENCE": "1"}
    assert config(**variables) == (1002, True, True, "debug")
    assert config("--port", "1003", "--no-demo", "--no-presence", **variables) == (
        1003,
        False,
        False,
        "debug",
    )
    assert config("--log-level", "error", ROOMCAST_LOG_LEVEL="info")[3] == "error"


def test_the_file_may_be_named_by_roomcast_config(tmp_path: Path) -> None:
    """ROOMCAST_CONFIG names the file as --config does; --config wins."""
    path = written(tmp_path, "port = 1001\n")
    other = tmp_path / "other.toml"
    other.write_text("port = 1002\n")
    env = {"ROOMCAST_CONFIG": path}
    assert config_from(parse_arguments(["serve"], env)).port == 1001
    assert config_from(parse_arguments(["serve", f"--config={other}"], env)).port == 1002


def _toml_sample(opt: Option) -> tuple[str, Any]:
    """A value other than the default for ``opt``: as TOML, and as ServerConfig holds it."""
    if opt.kind in ("switch", "off-switch", "either"):
        value = opt.kind == "switch"
        return str(value).lower(), value
    if opt.kind == "origins":
        return '["https://a.example", "https://b.example"]', frozenset(
            {"https://a.example", "https://b.example"}
        )
    if opt.kind == "redis-url":
        return '"redis://sample:1"', "redis://sample:1"
    if opt.kind is http_url:
        return '"http://sample:1/hook"', "http://sample:1/hook"
    if opt.name == "hook_failure_policy":
        return '"allow"', "allow"
    if opt.kind in ("port", "port-or-off"):
        return "9999", 9999
    if opt.kind is int:
        return str(opt.default + 7), opt.default + 7
    if opt.kind is float:
        return str(opt.default + 0.5), opt.default + 0.5
    return '"sample-value"', "sample-value"


@pytest.mark.parametrize(
    "opt", [o for o in options(ServerConfig) if o not in COMMAND_LINE], ids=lambda o: o.name
)
def test_every_config_option_can_be_set_by_the_file_and_reaches_workers(
    tmp_path: Path, opt: Option
) -> None:
    """Each ServerConfig option, under its field's name, gives its value; a --workers
    supervisor hands it on (secrets in the environment, as for flags)."""
    text, expected = _toml_sample(opt)
    path = written(tmp_path, f"{opt.name} = {text}\n")
    args = parse_arguments(["serve", "--config", path, "--workers", "2"], {})
    assert getattr(config_from(args), opt.name) == expected
    argv, env = _worker_command(args)
    worker = config_from(parse_arguments(["serve", *argv, "--worker"], env))
    assert getattr(worker, opt.name) == expected


def test_workers_get_the_namespaces_not_the_file(tmp_path: Path) -> None:
    """A worker is given the supervisor's namespaces (as JSON in its environment) and not
    --config: it never reads the file, which may have changed or gone by the time a worker
    restarts."""
    path = written(tmp_path, "[namespaces.chat]\nmax_members = 5\n")
    args = parse_arguments(
        ["serve", "--config", path, "--workers", "2", "--capabilities-claim", "caps"], {}
    )
    supervisor = config_from(args)
    assert supervisor.rules is not None and supervisor.rules.claim == "caps"
    argv, env = _worker_command(args)
    assert not any(word.startswith("--config") for word in argv)
    assert WORKER_NAMESPACES_VARIABLE in env
    Path(path).write_text("this is no longer TOML")
    worker = config_from(
        parse_arguments(["serve", *argv, "--worker"], {**env, "ROOMCAST_CONFIG": path})
    )
    assert worker.rules is not None
    assert worker.rules.namespaces == supervisor.rules.namespaces
    assert worker.rules.claim == "caps"


def test_without_namespaces_there_are_no_rules(tmp_path: Path) -> None:
    """A file of options only leaves ServerConfig.rules None (every room: the defaults), and
    its workers get no namespaces variable, even if the supervisor's environment had one."""
    args = parse_arguments(["serve", "--config", written(tmp_path, "port = 1\n")], {})
    assert config_from(args).rules is None
    os.environ[WORKER_NAMESPACES_VARIABLE] = "{}"
    try:
        _, env = _worker_command(args)
    finally:
        del os.environ[WORKER_NAMESPACES_VARIABLE]
    assert WORKER_NAMESPACES_VARIABLE not in env


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "port = 8000\nmax_conections = 5\n",
            ":2: unknown option 'max_conections': did you mean 'max_connections'?",
        ),
        ("\nmax_connections = 0\n", ":2: max_connections: must be 1 or more, not 0"),
        ('port = "x"\n', ":1: port: expected a port number, not 'x'"),
        ("port = \n", ": Invalid value (at line 1, column 8)"),
        (
            "[namespaces.chat]\nmax_members = -1\n",
            ":2: namespaces.chat.max_members: expected a whole number, 0 or more, not -1",
        ),
    ],
)
def test_a_broken_file_stops_start_up_with_one_line(tmp_path: Path, text: str, says: str) -> None:
    """Exit status 2 and one line naming the file, the line and the key: no traceback."""
    path = written(tmp_path, text)
    result = roomcast("serve", "--config", path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"roomcast: error: {path}{says}"]


def test_a_missing_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """Named by --config or ROOMCAST_CONFIG, a file that is not there is named."""
    missing = tmp_path / "missing.toml"
    line = f"roomcast: error: {missing}: cannot read the config file (No such file or directory)"
    for result in (
        roomcast("serve", "--config", str(missing)),
        roomcast("serve", env={"ROOMCAST_CONFIG": str(missing)}),
    ):
        assert result.returncode == 2
        assert result.stderr.splitlines() == [line]
    assert roomcast("--version", env={"ROOMCAST_CONFIG": str(missing)}).returncode == 0
    assert roomcast("genconfig", env={"ROOMCAST_CONFIG": str(missing)}).returncode == 0


def test_config_without_a_file_name_is_the_parsers_one_line() -> None:
    """--config with nothing after it: argparse's own line, exit status 2."""
    result = roomcast("serve", "--config")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "roomcast: error: argument --config: expected one argument"
    ]


def test_help_shows_the_files_values(tmp_path: Path) -> None:
    """serve --config FILE --help says which values the file gives (a secret's is hidden)."""
    path = written(tmp_path, 'port = 9100\napi_key = "sekrit"\necho = true\n')
    result = roomcast("serve", "--config", path, "--help", env={"COLUMNS": "1000"})
    assert result.returncode == 0
    assert f"(default: 9100, from {path})" in result.stdout
    assert f"(set by {path})" in result.stdout and "sekrit" not in result.stdout
    assert f"(now on, from {path})" in result.stdout
    assert "--config CONFIG" in result.stdout


def test_genconfig_writes_a_file_that_serve_takes(tmp_path: Path) -> None:
    """genconfig PATH writes the file (stdout for none or -), refuses to overwrite it without
    --force, and the file as written loads to the defaults."""
    path = tmp_path / "roomcast.toml"
    assert roomcast("genconfig", str(path)).returncode == 0
    assert roomcast("genconfig").stdout == path.read_text() == roomcast("genconfig", "-").stdout
    again = roomcast("genconfig", str(path))
    assert again.returncode == 2
    assert again.stderr == f"roomcast: error: {path} exists: give --force to overwrite it\n"
    assert roomcast("genconfig", "--force", str(path)).returncode == 0
    assert config_from(parse_arguments(["serve", "--config", str(path)], {})) == ServerConfig()


async def _serves_on(port: int, *words: str, env: dict[str, str]) -> None:
    """``roomcast serve WORDS`` answers /healthz on ``port``."""
    process = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
        [sys.executable, "-m", "roomcast.serve.cli", "serve", "--log-level", "error", *words],
        env={**CLEAN, **env},
    )
    try:
        async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(seconds(20)):
            while True:
                assert process.poll() is None, "roomcast serve exited"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)


async def test_a_started_server_takes_its_port_by_precedence(tmp_path: Path) -> None:
    """A file made by genconfig, its port line uncommented: the server listens there; with
    ROOMCAST_PORT, there; with --port too, there."""
    ports = [free_port(), free_port(), free_port()]
    path = tmp_path / "roomcast.toml"
    assert roomcast("genconfig", str(path)).returncode == 0
    path.write_text(path.read_text().replace("#port = 8000", f"port = {ports[0]}"))
    await asyncio.gather(
        _serves_on(ports[0], "--config", str(path), env={}),
        _serves_on(ports[1], "--config", str(path), env={"ROOMCAST_PORT": str(ports[1])}),
        _serves_on(
            ports[2],
            "--config",
            str(path),
            "--port",
            str(ports[2]),
            env={"ROOMCAST_PORT": str(ports[1] + 1)},
        ),
    )


async def test_workers_started_from_a_file_serve_with_its_namespaces(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    """``workers = 2`` and the port in the file: both workers serve that port, each given
    the namespaces in its environment and no --config on its command line."""
    port = free_port()
    path = written(tmp_path, f"port = {port}\nworkers = 2\n[namespaces.chat]\nmax_members = 5\n")
    supervisor = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block
        [sys.executable, "-m", "roomcast.serve.cli", "serve", "--config", path],
        env={**CLEAN, "ROOMCAST_REDIS_URL": shared_redis.url, "ROOMCAST_LOG_LEVEL": "error"},
    )
    try:
        await eventually(lambda: len(psutil.Process(supervisor.pid).children()) == 2, 20)
        async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(seconds(20)):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        for worker in psutil.Process(supervisor.pid).children():
            assert "--config" not in " ".join(worker.cmdline())
            assert json.loads(worker.environ()[WORKER_NAMESPACES_VARIABLE]) == {
                "chat": {"max_members": 5}
            }
    finally:
        supervisor.send_signal(signal.SIGTERM)
        await asyncio.to_thread(supervisor.wait, 30)
    assert supervisor.returncode == 0
