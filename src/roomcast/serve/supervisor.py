"""``roomcast serve --workers N``: N server processes sharing one port, kept alive.

Each worker is an ordinary ``roomcast serve`` process (a fresh interpreter, not a fork, so no
event loop or socket state is inherited) that binds the port with SO_REUSEPORT; the kernel
spreads new connections over the workers' separate accept queues.  Workers are instances of
one distributed hub through Redis, so it makes no difference to a client which one it got.
Nor to a scrape: each worker is told its slot, the worker count and an id of this
supervisor's group (environment variables), and with them answers ``/metrics`` and
``/readyz`` for all the workers (``roomcast.serve.workers``).

The supervisor only watches: a worker that exits while the supervisor is not stopping is
logged and started again (after a pause that grows if it keeps dying, so a worker that cannot
start does not spin).  SIGTERM/SIGINT are passed on to every worker, which drain their clients
(1001) within ``--shutdown-timeout``; workers still alive a little after that are killed.

A supervisor that dies without passing anything on (``kill -9``, the OOM killer) must not
leave its workers serving the port, unmanaged, beside the workers of the next supervisor.  On
Linux each worker asks the kernel, first thing (``follow_supervisor``), for SIGTERM when its
parent dies (``prctl(PR_SET_PDEATHSIG)``), so it drains as on an ordinary stop; and gives itself
the deadline the supervisor would have enforced, ``--shutdown-timeout`` + 5 s, after which it
exits regardless.  Elsewhere there is no such signal: there, stop the supervisor with SIGTERM,
or its workers outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import select
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

__all__ = ["Supervisor", "follow_supervisor", "hold_ports"]

logger = logging.getLogger("roomcast.supervisor")

_WORKER_FLAG = "--worker"
"""Internal flag: this process is one of a supervisor's workers (binds with SO_REUSEPORT)."""
SUPERVISOR_PID_VARIABLE = "ROOMCAST_SUPERVISOR_PID"
"""Set in each worker's environment: the pid its parent must have, or the supervisor is gone."""
WORKER_SLOT_VARIABLE = "ROOMCAST_WORKER_SLOT"
"""Set in each worker's environment: which worker it is (0, 1, ...)."""
WORKER_COUNT_VARIABLE = "ROOMCAST_WORKER_COUNT"
"""Set in each worker's environment: how many workers the supervisor keeps."""
WORKER_GROUP_VARIABLE = "ROOMCAST_WORKER_GROUP"
"""Set in each worker's environment: an id new for each supervisor, naming the workers'
snapshots in Redis (``roomcast.serve.workers``)."""
_KILL_AFTER = 5.0
"""Seconds past ``shutdown_timeout`` after which a worker that is still stopping is killed."""
_PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""


def hold_ports(host: str, ports: Sequence[int]) -> list[int]:
    """Lock ``host``'s ``ports`` for this supervisor's life (the descriptors it returns stay
    open; the kernel lets the lock go when the process ends, however it ends).

    Workers bind with SO_REUSEPORT, which would let the workers of a second supervisor on the
    same port join the group in silence and split the hub's clients between two hubs; the lock
    makes the second one stop instead.

    Raises:
        OSError: another ``roomcast serve --workers`` holds one of the ports (EWOULDBLOCK).
    """
    held: list[int] = []
    for port in ports:
        name = f"roomcast-serve-{host.replace('/', '_')}-{port}.lock"
        descriptor = os.open(
            os.path.join(tempfile.gettempdir(), name), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            for other in held:
                os.close(other)
            raise
        held.append(descriptor)
    return held


class Supervisor:
    """Starts ``workers`` copies of ``roomcast serve`` and restarts those that die.

    Args:
        workers: How many worker processes.
        worker_args: The ``serve`` arguments each worker gets (without ``--workers``).
        worker_env: Environment of the workers (secrets go here, not into ``worker_args``,
            which anyone on the host can read in the process list).
        shutdown_timeout: Seconds the workers get to drain on SIGTERM.
        restart_delay: First pause before restarting a worker that died; doubles each time
            it dies again within ``stable_after`` seconds of starting, up to 30 s.
        stable_after: A worker that ran this long is considered healthy again.
    """

    def __init__(
        self,
        workers: int,
        worker_args: Sequence[str],
        worker_env: Mapping[str, str],
        *,
        shutdown_timeout: float,
        restart_delay: float = 0.5,
        stable_after: float = 10.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._count = workers
        self._args = [*worker_args, _WORKER_FLAG]
        self._env = dict(worker_env)
        self._shutdown_timeout = shutdown_timeout
        self._restart_delay = restart_delay
        self._stable_after = stable_after
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self.restarts = 0
        self._served = False  # (some worker has run for stable_after seconds)
        self._refused = False  # (a worker refused its settings before that: exit 2)

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers, by slot."""
        return [process.pid for _, process in sorted(self._processes.items())]

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status (0 after a clean drain)."""
        # Workers are spawned from this (the loop's) thread: the parent-death signal follows
        # the thread that forked, so spawning from another thread would fire it early.
        self._env[SUPERVISOR_PID_VARIABLE] = str(os.getpid())
        self._env[WORKER_COUNT_VARIABLE] = str(self._count)
        self._env[WORKER_GROUP_VARIABLE] = f"{os.getpid()}-{secrets.token_hex(4)}"
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        watchers = [asyncio.create_task(self._keep(slot)) for slot in range(self._count)]
        try:
            await self._stopping.wait()
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        status = await self._stop_workers()
        return 2 if self._refused else status

    def _mark_served(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            self._served = True  # a worker ran: later exits are failures to restart from

    async def _keep(self, slot: int) -> None:
        """Keep one worker slot filled until the supervisor stops."""
        loop = asyncio.get_running_loop()
        delay = self._restart_delay
        while not self._stopping.is_set():
            env = {**self._env, WORKER_SLOT_VARIABLE: str(slot)}  # (and its log lines say so)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "roomcast.serve.cli", "serve", *self._args, env=env
            )
            self._processes[slot] = process
            started = loop.time()
            loop.call_later(self._stable_after, self._mark_served, process)
            logger.info("worker %d started (pid %d)", slot, process.pid)
            status = await process.wait()
            if self._stopping.is_set():
                return
            if status == 2 and not self._served:
                # A worker that refuses its settings at once (exit 2, its line above: a port
                # in use, say) would refuse them again after every restart: stop instead.
                logger.error("worker %d refused to start (exit 2); stopping", slot)
                self._refused = True
                self._stopping.set()
                return
            self.restarts += 1
            if loop.time() - started >= self._stable_after:
                delay = self._restart_delay
            logger.error(
                "worker %d (pid %d) exited with status %d; restarting in %.1f s",
                slot,
                process.pid,
                status,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            delay = min(delay * 2, 30.0)

    async def _stop_workers(self) -> int:
        running = [p for p in self._processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        statuses: list[int] = []
        for process in running:
            try:
                async with asyncio.timeout(self._shutdown_timeout + _KILL_AFTER):
                    statuses.append(await process.wait())
            except TimeoutError:
                logger.error("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                statuses.append(await process.wait())
        failed = [status for status in statuses if status != 0]
        if failed:
            logger.error("%d worker(s) did not stop cleanly (status %s)", len(failed), failed)
        return 1 if failed else 0


def is_worker(argv: Sequence[str]) -> bool:
    """True if these are the arguments of a supervisor's worker."""
    return _WORKER_FLAG in argv


def follow_supervisor(shutdown_timeout: float) -> None:
    """In a worker, before it serves: stop when the supervisor that started it dies, however.

    The kernel sends SIGTERM (the worker's ordinary, draining stop) when the parent dies; as
    the supervisor may have died before this call, the parent is then checked against the pid
    the supervisor left in the environment (a dead parent's orphans get a new one: init or a
    subreaper).  A watcher thread exits the process ``shutdown_timeout`` + 5 s after the
    supervisor's death if the drain has not ended it by then: nobody else is left to kill it.
    Does nothing in a process no ``Supervisor`` started, and only logs where the signal is
    not available (not Linux).

    Raises:
        SystemExit: the supervisor is already gone; the worker must not start.
    """
    expected = os.environ.pop(SUPERVISOR_PID_VARIABLE, None)  # not for our own children
    if expected is None:
        return
    supervisor = int(expected)
    if not _parent_death_signal(signal.SIGTERM):
        logger.info("no parent-death signal here: a SIGKILLed supervisor leaves this worker")
        return
    gone = f"roomcast worker: its supervisor (pid {supervisor}) is gone; not starting"
    pidfd: int | None
    try:
        # Opened before the parent check, so that if the check passes it is the supervisor's.
        pidfd = os.pidfd_open(supervisor)
    except ProcessLookupError:
        raise SystemExit(gone) from None
    except (OSError, AttributeError):  # pragma: no cover - before Linux 5.3: no deadline
        pidfd = None
    if os.getppid() != supervisor:
        raise SystemExit(gone)
    if pidfd is not None:
        threading.Thread(
            target=_exit_after_parent,
            args=(pidfd, shutdown_timeout + _KILL_AFTER),
            name="roomcast-supervisor-watch",
            daemon=True,
        ).start()


def _parent_death_signal(signum: int) -> bool:
    """Ask Linux for ``signum`` when the parent dies; False where that cannot be had."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:  # pragma: no cover - never on Linux
        logger.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def _exit_after_parent(pidfd: int, deadline: float) -> None:
    """Block until the process behind ``pidfd`` exits, then give the drain ``deadline``
    seconds before ending this one; a normal exit first makes this (daemon) thread moot."""
    select.select([pidfd], [], [])  # readable once that process has exited
    time.sleep(deadline)
    logger.error("supervisor gone and not stopped %.0f s later; exiting", deadline)
    os._exit(1)
