"""``roomcast serve --workers N``: N server processes sharing one port, kept alive.

Each worker is an ordinary ``roomcast serve`` process (a fresh interpreter, not a fork, so no
event loop or socket state is inherited) that binds the port with SO_REUSEPORT; the kernel
spreads new connections over the workers' separate accept queues.  Workers are instances of
one distributed hub through Redis, so it makes no difference to a client which one it got.

The supervisor only watches: a worker that exits while the supervisor is not stopping is
logged and started again (after a pause that grows if it keeps dying, so a worker that cannot
start does not spin).  SIGTERM/SIGINT are passed on to every worker, which drain their clients
(1001) within ``--shutdown-timeout``; workers still alive a little after that are killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping, Sequence

__all__ = ["Supervisor"]

logger = logging.getLogger("roomcast.supervisor")

_WORKER_FLAG = "--worker"
"""Internal flag: this process is one of a supervisor's workers (binds with SO_REUSEPORT)."""


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

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers, by slot."""
        return [process.pid for _, process in sorted(self._processes.items())]

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status (0 after a clean drain)."""
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
        return await self._stop_workers()

    async def _keep(self, slot: int) -> None:
        """Keep one worker slot filled until the supervisor stops."""
        loop = asyncio.get_running_loop()
        delay = self._restart_delay
        while not self._stopping.is_set():
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "roomcast.cli", "serve", *self._args, env=self._env
            )
            self._processes[slot] = process
            started = loop.time()
            logger.info("worker %d started (pid %d)", slot, process.pid)
            status = await process.wait()
            if self._stopping.is_set():
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
                async with asyncio.timeout(self._shutdown_timeout + 5):
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
