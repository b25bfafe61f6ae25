"""The real `pgflow supervise`, as a subprocess of the demo."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pgflow import PgflowError

PR_SET_PDEATHSIG = 1


class SupervisorFailed(PgflowError):
    """The supervisor exited before it was ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (others may share this machine)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0)


class SupervisorProcess:
    def __init__(self, dsn: str, flows: str, processes: int, metrics_port: int,
                 log_path: Path) -> None:
        self.dsn = dsn
        self.flows = flows
        self.processes = processes
        self.metrics_port = metrics_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        command = [sys.executable, "-m", "supervisor.cli", "supervise", "--flows", self.flows,
                   "--processes", str(self.processes), "--metrics-port", str(self.metrics_port),
                   "--log-level", "INFO"]
        # The URL goes in the environment, not argv: `ps` shows argv to everyone.
        env = {**os.environ, "PGFLOW_DATABASE_URL": self.dsn}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200; raises SupervisorFailed if it exits first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SupervisorFailed(
                    f"the supervisor exited with code {self.proc.returncode}; its log "
                    f"({self.log_path}) ends with:\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.05)
        raise SupervisorFailed(f"the supervisor was not ready after {timeout:g}s; see {self.log_path}")

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def scrape(self) -> str:
        """The /metrics text, or "" when it cannot be read."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as answer:
                return str(answer.read().decode())
        except OSError:
            return ""

    def stop(self, *, fast: bool) -> int | None:
        """TERM (drain) or INT (stop at once), then KILL after a while; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT if fast else signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode
