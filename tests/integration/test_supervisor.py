"""``roomcast serve --workers N``: worker processes sharing the ports, one hub through Redis,
restarted when they die, drained together on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from roomcast import CloseCode
from roomcast.serve.cli import main
from tests.redis_support import RedisServer, free_port
from tests.support import connect, eventually, recv, seconds


def workers_of(supervisor: subprocess.Popen[bytes]) -> list[psutil.Process]:
    children: list[psutil.Process] = psutil.Process(supervisor.pid).children()
    return children


def clients_of(worker: psutil.Process, port: int) -> int:
    """Established client sockets a worker holds on ``port``."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return sum(
            1
            for conn in worker.net_connections("tcp")
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port
        )
    return 0


async def test_workers_share_the_port_are_one_hub_and_are_restarted(own_redis: RedisServer) -> None:
    """Three workers take connections on one port and deliver as one hub; a worker killed
    with SIGKILL is replaced; SIGTERM drains every client with 1001 and exits 0."""
    port, api_port = free_port(), free_port()
    supervisor = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block; psutil reads it
        [
            sys.executable,
            "-m",
            "roomcast.serve.cli",
            "serve",
            "--workers",
            "3",
            "--port",
            str(port),
            "--api-port",
            str(api_port),
            "--log-level",
            "warning",
            "--shutdown-timeout",
            "5",
        ],
        env={**os.environ, "ROOMCAST_API_KEY": "k", "ROOMCAST_REDIS_URL": own_redis.url},
    )
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
    clients: list[ClientConnection] = []
    try:
        await eventually(lambda: len(workers_of(supervisor)) == 3, timeout_units=20)
        # The secrets reached the workers through the environment, not their command line.
        for worker in workers_of(supervisor):
            assert own_redis.url not in " ".join(worker.cmdline())
        # Each knows which worker it is (its log lines say "worker N").
        slots = {worker.environ().get("ROOMCAST_WORKER_SLOT") for worker in workers_of(supervisor)}
        assert slots == {"0", "1", "2"}
        await eventually(
            lambda: int(own_redis.cli("PUBSUB", "NUMSUB", "ws:broadcast").split()[-1]) == 3,
            timeout_units=20,
        )
        for n in range(30):
            clients.append(await connect(f"ws://127.0.0.1:{port}/ws/lobby?user_id=u{n}"))
        await eventually(lambda: sum(clients_of(w, port) for w in workers_of(supervisor)) == 30)
        holding = [clients_of(w, port) for w in workers_of(supervisor)]
        assert sum(1 for count in holding if count) >= 2, holding  # the kernel spread them
        await eventually(
            lambda: (
                int(own_redis.cli("PUBSUB", "NUMSUB", "ws:room:lobby").split()[-1])
                == sum(1 for count in holding if count)
            )
        )

        response = await api.post(
            "/api/publish", json={"room": "lobby", "data": "one"}, headers={"X-API-Key": "k"}
        )
        assert response.status_code == 200
        for client in clients:
            assert '"one"' in str(await recv(client))

        victim = max(workers_of(supervisor), key=lambda w: clients_of(w, port))
        lost = clients_of(victim, port)
        victim.kill()
        # The kernel closes the dead worker's sockets: exactly its clients see a close.
        await eventually(lambda: sum(c.state is State.CLOSED for c in clients) == lost)
        survivors = [client for client in clients if client.state is State.OPEN]
        assert len(survivors) == 30 - lost
        await eventually(
            lambda: (
                len(workers_of(supervisor)) == 3
                and victim.pid not in {w.pid for w in workers_of(supervisor)}
            ),
            timeout_units=20,
        )
        await eventually(
            lambda: int(own_redis.cli("PUBSUB", "NUMSUB", "ws:broadcast").split()[-1]) == 3,
            timeout_units=20,
        )
        response = await api.post(
            "/api/publish", json={"room": "lobby", "data": "two"}, headers={"X-API-Key": "k"}
        )
        for client in survivors:
            assert '"two"' in str(await recv(client))

        supervisor.send_signal(signal.SIGTERM)
        for client in survivors:
            with pytest.raises(ConnectionClosed):
                await recv(client, timeout_units=10)
            assert client.close_code == CloseCode.GOING_AWAY
        assert await asyncio.to_thread(supervisor.wait, seconds(20)) == 0
    finally:
        await api.aclose()
        if supervisor.poll() is None:
            for worker in workers_of(supervisor):
                worker.kill()
            supervisor.kill()
            supervisor.wait()


def test_workers_without_redis_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--workers 2 without --redis-url would be two separate hubs on one port: refused."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--workers", "2"])
    assert exit_info.value.code == 2
    assert "needs --redis-url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--workers", "0"])


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return bool(status == psutil.STATUS_ZOMBIE)


def port_is_free(port: int) -> bool:
    """A plain listener (no SO_REUSEPORT) can bind the port: no worker listens on it."""
    with socket.socket() as sock:
        # SO_REUSEADDR only passes over TIME_WAIT leftovers, never over a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_kill_9_of_the_supervisor_takes_its_workers_down(own_redis: RedisServer) -> None:
    """After a SIGKILL of the supervisor its workers get SIGTERM from the kernel: each drains
    its clients (1001) and exits, and the port is free for the next supervisor."""
    port = free_port()
    supervisor = subprocess.Popen(  # noqa: ASYNC220 - spawning does not block; psutil reads it
        [
            sys.executable,
            "-m",
            "roomcast.serve.cli",
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
            "--api-port",
            "-1",
            "--log-level",
            "warning",
            "--shutdown-timeout",
            "3",
        ],
        env={**os.environ, "ROOMCAST_REDIS_URL": own_redis.url},
    )
    pids: list[int] = []
    try:
        await eventually(lambda: len(workers_of(supervisor)) == 2, timeout_units=20)
        pids = [worker.pid for worker in workers_of(supervisor)]
        await eventually(
            lambda: int(own_redis.cli("PUBSUB", "NUMSUB", "ws:broadcast").split()[-1]) == 2,
            timeout_units=20,
        )
        client = await connect(f"ws://127.0.0.1:{port}/ws/lobby?user_id=u")
        assert not port_is_free(port)

        supervisor.kill()
        assert await asyncio.to_thread(supervisor.wait, seconds(10)) == -signal.SIGKILL
        # Timeline: the kernel sends SIGTERM at once; the client is closed with 1001 within
        # the drain (3 s) and every worker is gone well within 15 s.
        with pytest.raises(ConnectionClosed):
            await recv(client, timeout_units=15)
        assert client.close_code == CloseCode.GOING_AWAY
        await eventually(lambda: all(gone(pid) for pid in pids), timeout_units=15)
        assert port_is_free(port)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        for pid in pids:  # only if the test failed: the workers this test started
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


def reaped_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    with subprocess.Popen([sys.executable, "-c", ""]) as finished:
        finished.wait()
    return finished.pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("supervisor", ["reaped", "not-the-parent"])
def test_a_worker_whose_supervisor_is_already_gone_does_not_start(supervisor: str) -> None:
    """A worker that finds its parent is not the supervisor named in its environment (it
    died before the worker could ask for the parent-death signal) exits at once, unserved."""
    pid = reaped_pid() if supervisor == "reaped" else os.getppid()
    port = free_port()
    worker = subprocess.run(
        [sys.executable, "-m", "roomcast.serve.cli", "serve", "--worker", "--port", str(port)],
        env={**os.environ, "ROOMCAST_SUPERVISOR_PID": str(pid)},
        capture_output=True,
        timeout=seconds(20),
    )
    assert worker.returncode == 1
    assert f"supervisor (pid {pid}) is gone" in worker.stderr.decode()
    assert b"WebSocket clients:" not in worker.stderr


WEDGED_WORKER = """
import signal, sys, time
from roomcast.serve.supervisor import follow_supervisor
follow_supervisor(shutdown_timeout=0.5)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a drain that never ends
print("ready", flush=True)
time.sleep(600)
"""

FAKE_SUPERVISOR = """
import os, subprocess, sys, time
env = {**os.environ, "ROOMCAST_SUPERVISOR_PID": str(os.getpid())}
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env)
print(worker.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_worker_that_does_not_stop_exits_at_its_deadline() -> None:
    """A worker whose drain never ends after its supervisor's SIGKILL still exits, at
    shutdown_timeout + 5 s: the kill the supervisor would have sent, with none left to send it."""
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FAKE_SUPERVISOR,
        WEDGED_WORKER,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    worker = 0
    try:
        assert supervisor.stdout is not None and supervisor.stderr is not None
        async with asyncio.timeout(seconds(20)):
            worker = int(await supervisor.stdout.readline())
            assert await supervisor.stdout.readline() == b"ready\n"
        # Timeline: SIGKILL at 0; the SIGTERM is ignored; the watcher exits it at 5.5 s.
        # (Not supervisor.wait() first: asyncio's waits for the pipes the worker holds.)
        killed_at = time.monotonic()
        supervisor.kill()
        await eventually(lambda: gone(worker), timeout_units=15)
        assert time.monotonic() - killed_at >= 5.5 - 0.5  # its deadline, not the signal
        async with asyncio.timeout(seconds(5)):
            log = await supervisor.stderr.read()
        assert b"supervisor gone and not stopped" in log
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()
        if worker:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(worker).kill()


def test_follow_supervisor_does_nothing_unsupervised_or_off_linux(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the supervisor's variable (a hand-run ``serve --worker``) nothing happens;
    where there is no parent-death signal the worker says so and serves on."""
    from roomcast.serve.supervisor import SUPERVISOR_PID_VARIABLE, follow_supervisor

    monkeypatch.delenv(SUPERVISOR_PID_VARIABLE, raising=False)
    follow_supervisor(1.0)
    monkeypatch.setattr(sys, "platform", "darwin")  # so this process is not given a signal
    monkeypatch.setenv(SUPERVISOR_PID_VARIABLE, str(os.getppid()))
    with caplog.at_level("INFO", logger="roomcast.supervisor"):
        follow_supervisor(1.0)
    assert "no parent-death signal" in caplog.text
    assert SUPERVISOR_PID_VARIABLE not in os.environ  # not passed on to its own children


async def test_a_second_workers_server_on_a_held_port_is_refused(own_redis: RedisServer) -> None:
    """SO_REUSEPORT would let a second ``--workers`` server's workers join the first one's in
    silence (each client then sees half the hub): the second stops with one line instead."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "roomcast.serve.cli",
        "serve",
        "--workers",
        "2",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "ROOMCAST_REDIS_URL": own_redis.url}
    first = subprocess.Popen(command, env=env)  # noqa: ASYNC220 - spawning does not block
    try:
        await eventually(lambda: len(workers_of(first)) == 2, timeout_units=20)
        second = await asyncio.create_subprocess_exec(
            *command, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, errors = await asyncio.wait_for(second.communicate(), seconds(20))
        assert second.returncode == 2
        assert errors.decode().strip().splitlines() == [
            f"roomcast: error: --port {port}: another roomcast serve --workers already serves "
            f"127.0.0.1:{port}; stop it or choose another --port (its workers would share the "
            "port and split the hub)"
        ]
        assert first.poll() is None and len(workers_of(first)) == 2  # the first one serves on
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)


async def test_workers_that_refuse_their_settings_stop_the_supervisor(
    own_redis: RedisServer,
) -> None:
    """A port some other program holds: every worker stops with one line (exit 2); the
    supervisor does not restart them for ever, it stops with exit 2 too."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        supervisor = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "roomcast.serve.cli",
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
            "--log-level",
            "warning",
            env={**os.environ, "ROOMCAST_REDIS_URL": own_redis.url},
            stderr=asyncio.subprocess.PIPE,
        )
        _, errors = await asyncio.wait_for(supervisor.communicate(), seconds(30))
    assert supervisor.returncode == 2
    text = errors.decode()
    assert "already in use" in text and "refused to start (exit 2); stopping" in text
    assert "Traceback" not in text
