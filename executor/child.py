"""An executor process, from the fork to its exit: read a request frame,
execute, write an answer frame (see executor.protocol), until the supervisor
closes the pipe.

The child owns no deadline (the supervisor kills it at the task's deadline);
it uses the task's timeout only as a soft limit so Python code gets a chance
to run its `finally` blocks. It never uses a database connection inherited
from the parent: it opens its own, lazily, the first time a handler reads
`ctx.flow_input` that the claim did not carry (the claim carries small flow
inputs), and keeps it for later tasks.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, NoReturn

from executor import protocol
from executor.executor import DEFAULT_MAX_OUTPUT_BYTES, execute, keep_alarm_handler, serialize_error
from executor.result import Err, Ok, Result
from pgflow import jsondata
from pgflow.flow import Flow

PR_SET_PDEATHSIG = 1
_SIGNALS_TO_DEFAULT = ("SIGTERM", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGQUIT", "SIGUSR1",
                       "SIGUSR2", "SIGCHLD", "SIGALRM")

# Exit codes the supervisor tells apart: an executor that leaves on purpose
# (its state is suspect: a soft timeout interrupted a handler, or a handler
# closed stdin/stdout/stderr) is replaced without counting as a crash.
EXIT_CLEAN = 0
EXIT_ERROR = 1
EXIT_RETIRE = 75


def main(sock_fd: int, flows: Mapping[str, Flow], dsn: str | None, parent_pid: int,
         max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> NoReturn:
    """Run in a freshly forked child: prepare the process, serve, and leave
    with os._exit (never through the parent's atexit handlers or finalizers)."""
    code = EXIT_ERROR
    try:
        prepare_child_process(parent_pid)
        keep_alarm_handler()
        close_inherited_fds(keep={0, 1, 2, sock_fd})
        code = serve(sock_fd, sock_fd, flows, dsn, max_output_bytes)
    except (BrokenPipeError, ConnectionResetError):
        code = EXIT_CLEAN  # the supervisor is gone: nobody is left to answer
    except BaseException:  # noqa: BLE001 - report anything, then leave without cleanup
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def prepare_child_process(expected_parent_pid: int | None = None) -> None:
    """Call first thing in the child after fork, on its (only, main) thread.

    Drops the parent's signal handlers and wakeup fd; ignores SIGINT so a
    Ctrl-C in a terminal lets the parent drain its children instead of
    killing them mid-task; leads a process group of its own, so the
    supervisor's kill takes down anything a handler forked too; and on Linux
    asks the kernel to SIGKILL this process when the parent dies. If the
    parent is already gone (it died before prctl took effect), exits at once.
    """
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in _SIGNALS_TO_DEFAULT:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    with contextlib.suppress(OSError):  # already a group leader, or not allowed
        os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
    if expected_parent_pid is not None and os.getppid() != expected_parent_pid:
        os._exit(EXIT_ERROR)


def close_inherited_fds(keep: set[int]) -> None:
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


class LazyConnection:
    """A zero-arg callable returning this process's own connection, opened on
    first call (and again after the server dropped it).

    It may go through a transaction pooler, so it keeps nothing across
    transactions: no prepared statements (its one query, a primary-key
    lookup, gains nothing from them) and no notifications."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None

    def __call__(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            from pgflow import db

            self.close()
            self._conn = db.connect(self._dsn, "pgflow executor", pooler="transaction")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def serve(read_fd: int, write_fd: int, flows: Mapping[str, Flow], dsn: str | None,
          max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> int:
    """Answer request frames until EOF on `read_fd`; returns the exit code.

    Reads as much as is there (several requests may be queued), answers each
    as soon as it is done.
    """
    connect = LazyConnection(dsn) if dsn else None
    decoder = protocol.FrameDecoder()
    requests: collections.deque[bytes] = collections.deque()
    try:
        while True:
            if not requests:
                bodies = decoder.read_from(read_fd)
                if bodies is None:
                    return EXIT_CLEAN if not decoder.buffered else EXIT_ERROR
                requests.extend(bodies)
                continue
            answer, timed_out = handle_request(requests.popleft(), flows, connect,
                                               max_output_bytes)
            protocol.write_all(write_fd, answer)
            if timed_out or not standard_fds_open():
                # An interrupted handler may have left this process in any
                # state, and a handler that closed stdio broke it: take no
                # further task (requests still queued were never started).
                return EXIT_RETIRE
    finally:
        if connect is not None:
            connect.close()


def standard_fds_open() -> bool:
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return False
    return True


def handle_request(body: bytes, flows: Mapping[str, Flow], connect: Any,
                   max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> tuple[bytes, bool]:
    """The answer frame for one request frame, and whether the task timed out.
    Never raises for a bad request or handler."""
    started = time.perf_counter()
    try:
        task = protocol.decode_request(body)
    except Exception as exc:  # noqa: BLE001 - a malformed request is answered, not fatal
        head = protocol.request_head(body)
        return _answer({"task_id": head.get("task_id")}, _undecodable(head, exc), started), False
    flow = flows.get(task.flow_slug)
    result: Result
    if flow is None:
        known = ", ".join(sorted(flows)) or "none"
        result = Err(f"Unknown flow: '{task.flow_slug}' (this worker serves: {known}); "
                     "is the flow module listed in the worker's configuration?", "UnknownFlow")
    else:
        result = execute(flow, task, connect, task.timeout_ms, encoded=True,
                         max_output_bytes=max_output_bytes)
    return _answer({"task_id": task.task_id}, result, started), result.timed_out


def _undecodable(head: Mapping[str, Any], exc: Exception) -> Err:
    if "flow_slug" not in head:
        return Err(f"Malformed task request: {serialize_error(exc)}", "MalformedRequest")
    where = f"Flow {head['flow_slug']!r}, step {head.get('step_slug')!r}, run {head.get('run_id')}"
    return Err(jsondata.undecodable_input(where, serialize_error(exc)), "InputNotDecodable")


def _answer(meta: dict[str, Any], result: Result, started: float) -> bytes:
    meta["duration_s"] = time.perf_counter() - started
    meta["max_rss_kb"] = max_rss_kb()
    if isinstance(result, Ok):
        meta["ok"] = True
        return protocol.encode_answer(meta, result.value)
    meta.update(ok=False, error=result.error, error_type=result.error_type,
                traceback=result.traceback, timed_out=result.timed_out)
    return protocol.encode_answer(meta)


def max_rss_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere
