"""What a forked executor process runs: read a request frame, execute, write an answer frame.

Request (parent -> child), one per task:

    {"task": ClaimedTask.to_wire()}

Answer (child -> parent), exactly one per request, in order:

    {"task_id": int | None,    # None only if the request was malformed
     "attempt": int | None,
     "ok": bool,
     "output": <JSON>,          # present iff ok
     "error": str,              # present iff not ok
     "timed_out": bool,         # the soft limit fired: replace this process
     "duration_s": float,       # time spent handling the request
     "max_rss_kb": int}         # peak resident set of this process, in KiB

The child owns no deadline (the parent kills it at the task's deadline); it
uses the task's timeout only as a soft limit so Python code gets a chance to
run its `finally` blocks. It never uses a database connection inherited from
the parent: it opens its own, lazily, the first time a handler reads
`ctx.flow_input` that the claim did not carry, and keeps it for later tasks.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from executor import frames
from executor.executor import execute, serialize_error
from executor.result import Err, Result
from pgflow.flow import Flow
from pgflow.task import ClaimedTask

PR_SET_PDEATHSIG = 1
_SIGNALS_TO_DEFAULT = ("SIGTERM", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGQUIT", "SIGUSR1",
                       "SIGUSR2", "SIGCHLD", "SIGALRM")


def prepare_child_process(expected_parent_pid: int | None = None) -> None:
    """Call first thing in the child after fork, on its (only, main) thread.

    Drops the parent's signal handlers and wakeup fd; ignores SIGINT so a
    Ctrl-C in a terminal (sent to the whole process group) lets the parent
    drain its children instead of killing them mid-task; and on Linux asks
    the kernel to SIGKILL this process when the parent dies. If the parent is
    already gone (it died before prctl took effect), exits at once.
    """
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in _SIGNALS_TO_DEFAULT:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
    if expected_parent_pid is not None and os.getppid() != expected_parent_pid:
        os._exit(1)


class LazyConnection:
    """A zero-arg callable returning this process's own connection, opened on first call."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None

    def __call__(self) -> Any:
        if self._conn is None or self._conn.closed:
            import psycopg  # only children whose handlers need the database pay for it

            self._conn = psycopg.connect(
                self._dsn, autocommit=True, application_name="pgflow executor"
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def serve(read_fd: int, write_fd: int, flows: Mapping[str, Flow], dsn: str | None) -> None:
    """Answer request frames until EOF on `read_fd` (or the parent stops reading)."""
    connect = LazyConnection(dsn) if dsn else None
    try:
        while (request := frames.read_frame(read_fd)) is not None:
            answer = handle_request(request, flows, connect)
            try:
                data = frames.encode(answer)
            except (TypeError, frames.FrameError) as exc:
                data = frames.encode(_error_answer(answer, f"Answer could not be encoded: "
                                                           f"{serialize_error(exc)}"))
            frames.write_all(write_fd, data)
            if answer.get("timed_out"):
                # An interrupted handler may have left this process in any
                # state: take no further task (the parent replaces us, and
                # tasks still queued in the pipe were never started).
                return
    except BrokenPipeError:
        return  # the parent is gone; nobody is left to answer
    finally:
        if connect is not None:
            connect.close()


def handle_request(request: Any, flows: Mapping[str, Flow], connect: Any) -> dict[str, Any]:
    """The answer frame for one request frame; never raises for a bad request or handler."""
    started = time.perf_counter()
    try:
        task = ClaimedTask.from_wire(request["task"])
    except Exception as exc:  # noqa: BLE001 - a malformed request is answered, not fatal
        wire = request.get("task") if isinstance(request, dict) else None
        wire = wire if isinstance(wire, dict) else {}
        answer = {"task_id": wire.get("task_id"), "attempt": wire.get("attempt")}
        return _finish(answer, Err(f"Malformed task request: {serialize_error(exc)}"), started)
    answer = {"task_id": task.task_id, "attempt": task.attempt}
    flow = flows.get(task.flow_slug)
    result: Result
    if flow is None:
        known = ", ".join(sorted(flows)) or "none"
        result = Err(f"Unknown flow: '{task.flow_slug}' (this worker serves: {known}); "
                     "is the flow module listed in the worker's configuration?")
    else:
        result = execute(flow, task, connect, task.timeout_ms, encoded=True)
    return _finish(answer, result, started)


def _finish(answer: dict[str, Any], result: Result, started: float) -> dict[str, Any]:
    if isinstance(result, Err):
        answer.update(ok=False, error=result.error, timed_out=result.timed_out)
    else:
        answer.update(ok=True, output=result.value, timed_out=False)
    answer.update(duration_s=time.perf_counter() - started, max_rss_kb=max_rss_kb())
    return answer


def _error_answer(answer: dict[str, Any], message: str) -> dict[str, Any]:
    fields = ("task_id", "attempt", "timed_out", "duration_s", "max_rss_kb")
    return {**{k: answer.get(k) for k in fields}, "ok": False, "error": message}


def max_rss_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere
