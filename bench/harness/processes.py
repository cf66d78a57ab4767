"""Server processes of a run, and what the driver reads about any process from ``/proc``.

Every process a run starts gets ``SIGKILL`` when the driver dies, however it dies
(``die_with_parent``), and is killed, not stopped gracefully, at the end: a graceful shutdown
of 15k WebSockets measures nothing useful.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

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
        log_path: stdout and stderr go there (truncated).
        env: The whole environment (default: the driver's).
        cwd: Working directory (default: the driver's).
        cpus: CPUs it may run on (default: any).
    """

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self._log = log_path.open("wb")

        def in_child() -> None:
            die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.proc = psutil.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=in_child,
            env=env,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def exited(self) -> bool:
        return self.proc.poll() is not None

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
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, psutil.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()
