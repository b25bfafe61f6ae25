"""Processes the benchmark starts (supervisors, PgQueuer workers): each in a
session of its own, remembered until stopped, and killed with its whole
process group if the benchmark exits any other way (error, Ctrl-C, SIGTERM)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_running: list[Child] = []


class BenchTimeout(RuntimeError):
    """Something did not happen in time; the message says what and where to look."""


class Child:
    """One started process, its output going to a log file."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        self._log.flush()
        # A session of its own: Ctrl-C in the terminal reaches only the
        # benchmark, which then stops this process itself, group and all.
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.pid = self.proc.pid
        _running.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def describe_exit(self) -> str:
        return f"pid {self.pid} exited with code {self.proc.returncode}; see {self.log_path}"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL the process group."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # leftovers in its group (executors)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()
        if self in _running:
            _running.remove(self)


def kill_all() -> None:
    """Kill every process still running that this benchmark started."""
    for child in list(_running):
        child.kill()


def install_cleanup() -> None:
    """Kill what we started on any exit; turn SIGTERM/SIGHUP into a normal
    exit so `finally` blocks (dropping the scratch databases) run."""
    atexit.register(kill_all)

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               children: Sequence[Child] = (), interval: float = 0.02) -> None:
    """Poll `condition` until true; fail fast if one of `children` exits, and
    with a clear message after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{what}: {child.describe_exit()}")
        if time.monotonic() > deadline:
            logs = ", ".join(str(c.log_path) for c in children) or "no log"
            raise BenchTimeout(f"{what}: not done after {timeout:.0f}s (see {logs})")
        time.sleep(interval)


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc; works without CONFIG_PROC_CHILDREN)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" closing the command name: state ppid ...
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(entry.name))
    return found
