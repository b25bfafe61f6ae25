"""One forked executor process, as the parent sees it: its pid, its end of a
socketpair (non-blocking), the task it runs and that task's deadline.

The parent never blocks on a child: requests are buffered and written as the
socket accepts them, answers are read as they arrive and decoded
incrementally, so frames of any size move without deadlock.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any

from executor import frames
from executor.child import prepare_child_process, serve
from pgflow import ClaimedTask, Flow

READ_CHUNK = 1 << 20


class ExecutorProcess:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.fd = sock.fileno()
        self.started_at = time.monotonic()
        self.task: ClaimedTask | None = None
        self.dispatched_at = 0.0
        self.deadline: float | None = None
        self.tasks_done = 0
        # Set when this process must not take another task: "recycle",
        # "scale", "timeout" (then it is killed), "shutdown".
        self.retire_reason: str | None = None
        self.killed = False
        self.eof = False
        self._decoder = frames.FrameDecoder()
        self._out = bytearray()

    def __repr__(self) -> str:
        return f"<executor pid={self.pid} task={self.task.task_id if self.task else None}>"

    @property
    def idle(self) -> bool:
        return self.task is None and self.retire_reason is None and not self.eof

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def send(self, task: ClaimedTask, now: float, kill_grace: float) -> None:
        """Hand `task` to this process; its deadline starts now."""
        self.task = task
        self.dispatched_at = now
        self.deadline = now + task.timeout_ms / 1000 + kill_grace
        self._out += frames.encode({"task": task.to_wire()})
        self.flush()

    def flush(self) -> None:
        """Write what the socket takes now; the rest waits for writability."""
        while self._out:
            try:
                written = self.sock.send(self._out)
            except BlockingIOError:
                return
            except (BrokenPipeError, ConnectionResetError):
                self.eof = True
                self._out.clear()
                return
            del self._out[:written]

    def read_answers(self) -> list[dict[str, Any]]:
        """Every complete answer frame available now; sets `eof` when the child is gone."""
        answers: list[dict[str, Any]] = []
        while True:
            try:
                data = self.sock.recv(READ_CHUNK)
            except BlockingIOError:
                return answers
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                return answers
            answers.extend(self._decoder.feed(data))

    def finish_task(self) -> ClaimedTask | None:
        task, self.task, self.deadline = self.task, None, None
        if task is not None:
            self.tasks_done += 1
        return task

    def kill(self) -> None:
        if not self.killed:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close our end: an idle child sees EOF and exits on its own."""
        self.fd = -1
        with contextlib.suppress(OSError):
            self.sock.close()


def fork_executor(flows: Mapping[str, Flow], dsn: str) -> ExecutorProcess:
    """Fork one executor process. Call from the main thread of a process that
    runs no other thread (a fork while another thread holds a lock can
    deadlock the child)."""
    parent_sock, child_sock = socket.socketpair()
    parent_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    # Frozen objects are never touched by the child's collector, so the pages
    # holding the imported code stay shared copy-on-write. The parent unfreezes
    # at once, so its own garbage stays collectable over months of respawns.
    gc.freeze()
    pid = os.fork()
    if pid != 0:
        gc.unfreeze()
    else:  # the child: never returns
        code = 1
        try:
            prepare_child_process(parent_pid)
            fd = child_sock.fileno()
            _close_inherited_fds(keep={0, 1, 2, fd})
            serve(fd, fd, flows, dsn)
            code = 0
        except BaseException:  # noqa: BLE001 - report anything, then leave without cleanup
            traceback.print_exc()
        finally:
            os._exit(code)
    child_sock.close()
    parent_sock.setblocking(False)
    return ExecutorProcess(pid, parent_sock)


def _close_inherited_fds(keep: set[int]) -> None:
    """Close the parent's sockets, pipes and connections in the child, so other
    children see EOF when the parent closes their pipes and no inherited
    database connection can be used by mistake."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


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
