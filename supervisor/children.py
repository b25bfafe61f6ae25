"""One forked executor process, as the parent sees it: its pid, its end of a
socketpair (non-blocking), the task it runs and that task's deadline.

The parent never blocks on a child: requests are buffered and written as the
socket accepts them, answers are read as they arrive and decoded
incrementally, so frames of any size move without deadlock.
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
        # Tasks sent and not yet answered, in order: the first one runs, the
        # others wait in the socket (only with an executor depth above one).
        self.tasks: collections.deque[ClaimedTask] = collections.deque()
        self.running_since = 0.0  # when the first task started
        self.deadline: float | None = None
        self._kill_grace = 0.0
        self.tasks_done = 0
        # Set when this process must not take another task: "recycle",
        # "scale", "timeout" (then it is killed), "shutdown".
        self.retire_reason: str | None = None
        self.killed = False
        self.eof = False
        self._decoder = frames.FrameDecoder()
        self._out = bytearray()

    def __repr__(self) -> str:
        return f"<executor pid={self.pid} tasks={[t.task_id for t in self.tasks]}>"

    @property
    def task(self) -> ClaimedTask | None:
        """The task running now."""
        return self.tasks[0] if self.tasks else None

    @property
    def idle(self) -> bool:
        return not self.tasks and self.retire_reason is None and not self.eof

    def free_slots(self, depth: int) -> int:
        if self.retire_reason is not None or self.eof or self.killed:
            return 0
        return max(depth - len(self.tasks), 0)

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def send(self, task: ClaimedTask, now: float, kill_grace: float) -> None:
        """Hand `task` to this process; its deadline starts when it starts running."""
        self._kill_grace = kill_grace
        self.tasks.append(task)
        if len(self.tasks) == 1:
            self._start_head(now)
        self._out += frames.encode({"task": task.to_wire()})
        self.flush()

    def _start_head(self, now: float) -> None:
        head = self.tasks[0]
        self.running_since = now
        self.deadline = now + head.timeout_ms / 1000 + self._kill_grace

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

    def finish_task(self, now: float) -> ClaimedTask | None:
        """The running task is over; the next one sent (if any) starts now."""
        if not self.tasks:
            return None
        task = self.tasks.popleft()
        self.tasks_done += 1
        self.deadline = None
        if self.tasks:
            self._start_head(now)
        return task

    def take_all(self) -> list[ClaimedTask]:
        """Every task sent and not answered, none of them started (after a
        soft timeout the executor reads no further task)."""
        waiting = list(self.tasks)
        self.tasks.clear()
        self.deadline = None
        return waiting

    def take_unstarted(self) -> list[ClaimedTask]:
        """Tasks sent but not started (the process is going away): they go
        back to the supervisor's buffer."""
        waiting = []
        while len(self.tasks) > 1:
            waiting.append(self.tasks.pop())
        waiting.reverse()
        return waiting

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
