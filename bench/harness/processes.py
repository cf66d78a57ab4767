"""Server processes of a run, and what the driver reads about any process from ``/proc``.

Every process a run starts gets ``SIGKILL`` when the driver dies, however it dies
(``die_with_parent``), and is killed, not stopped gracefully, at the end: a graceful shutdown
of 15k WebSockets measures nothing useful.  A server that starts processes of its own
(``roomcast serve --workers``) runs in a session of its own, so that stopping it reaches the
whole group, orphans included.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import psutil

__all__ = ["ServerProcess", "cpu_ns_of", "die_with_parent", "io_of"]

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child process: get SIGKILL when the parent dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def cpu_ns_of(pid: int) -> int:
    """Nanoseconds process ``pid`` spent on CPU, user + system, all threads
    (``/proc/PID/task/*/schedstat``): the same time as utime + stime without their 10 ms
    clock-tick steps."""
    total = 0
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(OSError):
        for task in task_dir.iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total


def io_of(pid: int) -> dict[str, int]:
    """``/proc/PID/io`` (all threads): syscr / syscw count read and write system calls."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = int(value)
    return out


class ServerProcess:
    """One server subprocess: output to ``log_path``, killed with the driver.

    Args:
        command: The command line.
        log_path: stdout and stderr go there (truncated, or appended to with ``append``).
        env: The whole environment (default: the driver's).
        cwd: Working directory (default: the driver's).
        cpus: CPUs it may run on (default: any).
        session: In a session (and process group) of its own, stdin from ``/dev/null``:
            ``terminate`` and ``stop`` then reach the whole group (its workers too, even once
            the leader is gone).
        nofile: ``RLIMIT_NOFILE`` (soft and hard) set in the child before ``exec`` (0: the
            driver's).
        append: Append to ``log_path`` instead of truncating it (a server restarted under the
            same name keeps one log).
    """

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        cpus: set[int] | None = None,
        session: bool = False,
        nofile: int = 0,
        append: bool = False,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.session = session
        self._log = log_path.open("ab" if append else "wb")
        self._group_killed = False

        def in_child() -> None:
            die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = psutil.Popen(
            self.command,
            stdin=subprocess.DEVNULL if session else None,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=in_child,
            env=env,
            cwd=cwd,
            start_new_session=session,
        )

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def output(self) -> str:
        """What it wrote to its log so far."""
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> float:
        return float(self.proc.memory_info().rss) / 1024

    def cpu_s(self) -> float:
        """User + system seconds from psutil (10 ms clock ticks)."""
        times = self.proc.cpu_times()
        return float(times.user + times.system)

    def user_sys_s(self) -> tuple[float, float]:
        times = self.proc.cpu_times()
        return float(times.user), float(times.system)

    def cpu_ns(self) -> int:
        """Nanoseconds on CPU, all threads (``cpu_ns_of``)."""
        return cpu_ns_of(self.proc.pid)

    def signal(self, signum: int) -> None:
        """``signum`` to the process itself (not to its group)."""
        self.proc.send_signal(signum)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def terminate(self, grace: float) -> None:
        """SIGTERM (to the group, in a session) if it still runs; ``stop`` whatever is left
        after ``grace`` seconds.  Blocks: from an event loop, run it in a thread."""
        if not self.exited():
            if self.session:
                self._signal_group(signal.SIGTERM)
            else:
                self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired, psutil.TimeoutExpired):
                self.proc.wait(timeout=grace)
        self.stop()

    def stop(self) -> None:
        """SIGKILL (to the whole group, in a session), wait, close the log.  Safe to repeat:
        a group is killed once, since afterwards its id may belong to someone else."""
        if self.session:
            if not self._group_killed:
                self._signal_group(signal.SIGKILL)
                self._group_killed = True
        elif self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, psutil.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()


async def answer_commands(
    pipe: Pipe, handle: Callable[[tuple[Any, ...]], Awaitable[Any]], done: asyncio.Event
) -> None:
    """A client worker's side of its pipe: each command from the driver is handled and
    answered ``("ok", result)`` or ``("error", repr)``, until ``done`` is set (or the driver
    goes away, which is an ``("exit",)``)."""
    loop = asyncio.get_running_loop()
    while not done.is_set():
        # A blocking recv in a thread: the pipe stays a blocking socket for large replies.
        try:
            command = await loop.run_in_executor(None, pipe.recv)
        except EOFError:  # the driver went away
            command = ("exit",)
        try:
            reply: Any = ("ok", await handle(command))
        except Exception as exc:
            reply = ("error", repr(exc))
        pipe.send(reply)
    await asyncio.sleep(0.1)  # let the aborts go out
