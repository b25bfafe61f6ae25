"""One forked executor process as the supervisor sees it: its pid, its end of
a socketpair (non-blocking), the tasks sent to it and the running one's
deadline.

The supervisor never blocks on an executor: requests are buffered and written
as the socket accepts them, answers are read as they arrive and split
incrementally, so frames of any size move without deadlock. Only the pool
changes an executor's fields.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from enum import Enum

from executor import child, protocol
from pgflow import Flow
from supervisor.tasks import HeldTask


class ExecutorState(Enum):
    SERVING = "serving"  # takes tasks
    RETIRING = "retiring"  # takes none; closed once the ones it has are answered
    CLOSED = "closed"  # our end of the socket is closed: it exits at EOF
    KILLED = "killed"  # SIGKILL sent to its process group


class ExecutorProcess:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.fd = sock.fileno()
        self.started_at = time.monotonic()
        self.state = ExecutorState.SERVING
        # Why it left SERVING: recycle, scale, shutdown, timeout, cancel, lost.
        self.reason: str | None = None
        # Tasks sent and not yet answered, in order: the first one runs, the
        # others wait in the socket (only for short tasks, see Pool.dispatch).
        self.tasks: collections.deque[HeldTask] = collections.deque()
        self.running_since = 0.0
        self.deadline: float | None = None
        self.tasks_done = 0
        self.max_rss_kb = 0
        self.eof = False
        # A write failed (the process is gone or going): nothing more is sent,
        # but what it wrote before is still read, up to EOF.
        self.write_failed = False
        self._decoder = protocol.FrameDecoder()
        self._out = bytearray()

    def __repr__(self) -> str:
        return f"<executor {self.pid} {self.state.value} tasks={[t.task_id for t in self.tasks]}>"

    @property
    def running(self) -> HeldTask | None:
        return self.tasks[0] if self.tasks else None

    @property
    def serving(self) -> bool:
        return self.state == ExecutorState.SERVING and not self.eof and not self.write_failed

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    # -- tasks ---------------------------------------------------------------

    def send(self, task: HeldTask, now: float, kill_grace: float) -> None:
        """Hand `task` over; its deadline starts when it starts running."""
        self.tasks.append(task)
        if len(self.tasks) == 1:
            self._start_running(now, kill_grace)
        self._out += task.frame

    def _start_running(self, now: float, kill_grace: float) -> None:
        self.running_since = now
        self.deadline = now + self.tasks[0].timeout_ms / 1000 + kill_grace

    def finish_running(self, now: float, kill_grace: float) -> HeldTask:
        """The running task is over; the next one sent (if any) starts now."""
        task = self.tasks.popleft()
        self.tasks_done += 1
        self.deadline = None
        if self.tasks:
            self._start_running(now, kill_grace)
        return task

    def take_waiting(self) -> list[HeldTask]:
        """Tasks sent but not started (the process is going away): they go
        back to the supervisor's buffer untouched."""
        waiting = list(self.tasks)[1:]
        while len(self.tasks) > 1:
            self.tasks.pop()
        return waiting

    # -- I/O -----------------------------------------------------------------

    def flush(self) -> None:
        """Write what the socket takes now; the rest waits for writability."""
        while self._out:
            try:
                written = self.sock.send(self._out)
            except BlockingIOError:
                return
            except OSError:  # broken pipe, reset, or closed by us
                # Not eof: answers it sent before it died may wait in the socket.
                self.write_failed = True
                self._out.clear()
                return
            del self._out[:written]

    def read(self) -> list[protocol.Answer]:
        """Every complete answer available now; sets `eof` when the process is gone.
        Raises protocol.FrameError on a corrupt stream."""
        answers: list[protocol.Answer] = []
        while not self.eof:
            try:
                bodies = self._decoder.read_from(self.sock.fileno())
            except BlockingIOError:
                break
            except OSError:
                bodies = None
            if bodies is None:
                self.eof = True
                break
            answers.extend(protocol.decode_answer(body) for body in bodies)
        return answers

    # -- ending --------------------------------------------------------------

    def kill(self, reason: str) -> None:
        """SIGKILL the executor and everything it forked (its process group)."""
        if self.state != ExecutorState.KILLED:
            self.state = ExecutorState.KILLED
            self.reason = self.reason or reason
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close our end: an executor waiting for work sees EOF and exits."""
        if self.state != ExecutorState.KILLED:
            self.state = ExecutorState.CLOSED
        self.fd = -1
        with contextlib.suppress(OSError):
            self.sock.close()


def fork_executor(flows: Mapping[str, Flow], dsn: str, max_output_bytes: int) -> ExecutorProcess:
    """Fork one executor. Call from the main thread of a process that runs no
    other thread (a fork while another thread holds a lock can deadlock the
    child). Raises OSError when the system refuses (EAGAIN: a pids limit)."""
    parent_sock, child_sock = socket.socketpair()
    parent_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    # Frozen objects are never touched by the child's collector, so the pages
    # holding the imported code stay shared copy-on-write. The parent unfreezes
    # at once, so its own garbage stays collectable over months of respawns.
    gc.freeze()
    try:
        pid = os.fork()
    except OSError:
        gc.unfreeze()
        parent_sock.close()
        child_sock.close()
        raise
    if pid == 0:
        parent_sock.close()
        child.main(child_sock.fileno(), flows, dsn, parent_pid, max_output_bytes)
    gc.unfreeze()
    # Also set here, so a kill right after the fork reaches the whole group.
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    child_sock.close()
    parent_sock.setblocking(False)
    return ExecutorProcess(pid, parent_sock)


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "signal"
        return f"was killed by {name} ({number})"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"ended with status {status}"


def left_on_purpose(status: int) -> bool:
    """It exited because its state was suspect (executor.child.EXIT_RETIRE)."""
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == child.EXIT_RETIRE
