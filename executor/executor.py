"""Run one claimed task's handler: the seed's Executor, as module-level functions.

`execute` is the whole lifecycle (get_handler, build_context, prepare_input,
execute_with_timeout, serialize_output / serialize_error) and returns an
`Ok(output)` or an `Err(message)`; a handler failure never raises out of it.
KeyboardInterrupt is the one exception that passes through (it is the
operator's, not the handler's); SystemExit from a handler is just a failure.

Time limits here are soft: they interrupt Python code (SIGALRM on the main
thread, asyncio.timeout for `async def` handlers). Code stuck in C ignores
them; the supervisor's SIGKILL at the deadline is the hard limit, and a
process that reported a `Timeout` is replaced either way.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import psycopg

from executor.log_context import task_logging
from executor.result import Err, Ok, Result, Timeout
from pgflow import jsondata, queries
from pgflow.context import Context
from pgflow.flow import Flow, Handler, Step
from pgflow.task import ClaimedTask

DEFAULT_TIMEOUT_MS = 30_000
MAX_ERROR_BYTES = 8 * 1024
MAX_TRACEBACK_BYTES = 16 * 1024
# Outputs larger than this are refused before they leave the executor: a
# batch of answers is one jsonb document, which Postgres caps at 256 MB.
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024

# A psycopg Connection, a zero-arg callable returning one (opened on first use), or None.
ConnectionSource = Any


class _SoftTimeout(BaseException):
    """Raised into a handler by SIGALRM; BaseException so `except Exception` lets it through."""


def build_context(task: ClaimedTask, conn: ConnectionSource) -> Context:
    """The handler's Context; `ctx.flow_input` costs one query on first read unless the
    claim carried it. Give an autocommit connection: the query must not leave a
    transaction open while the handler runs."""
    if task.input_is_flow_input:
        source: dict[str, Any] = {"flow_input": task.input}
    elif task.flow_input_json is not None:
        carried = task.flow_input_json
        source = {"load_flow_input": lambda: orjson.loads(carried)}
    else:
        source = {"load_flow_input": _flow_input_loader(task, conn)}
    return Context(run_id=task.run_id, flow_slug=task.flow_slug, step_slug=task.step_slug,
                   task_index=task.task_index, attempt=task.attempt, **source)


def _flow_input_loader(task: ClaimedTask, conn: ConnectionSource) -> Callable[[], Any]:
    where = f"Run {task.run_id}, step {task.step_slug!r}"

    def load() -> Any:
        if conn is None:
            raise RuntimeError(f"{where}: ctx.flow_input needs a database connection and this "
                               "executor has none (give it a dsn)")
        row = _query_once_more_if_dropped(conn, queries.load("flow_input"), {"run_id": task.run_id})
        if row is None:
            raise LookupError(f"{where}: run not found while loading ctx.flow_input")
        return row["input"] if isinstance(row, Mapping) else row[0]

    return load


def _query_once_more_if_dropped(conn: ConnectionSource, sql: str, params: dict[str, Any]) -> Any:
    """fetchone() of `sql`. A connection opened on demand (a callable source)
    that the server dropped since its last use (a restart, a failover) fails
    once; open a fresh one and ask again rather than fail the attempt."""
    connection = conn if hasattr(conn, "execute") else conn()
    try:
        return connection.execute(sql, params).fetchone()
    except psycopg.OperationalError:
        if hasattr(conn, "execute") or not connection.broken:
            raise
    return conn().execute(sql, params).fetchone()


def get_handler(flow: Flow, step_slug: str) -> Result:
    step = flow.get_step(step_slug)
    if step is None:
        return Err(f"No handler defined for step: '{step_slug}'")
    return Ok(step.handler)


def prepare_input(task: ClaimedTask, ctx: Context, step: Step | None = None) -> Result:
    """The claim already built the input (flow input, deps map or map element); check its shape.

    Without `step` nothing can be checked, since a dependent single step and a map
    task look alike on the wire.
    """
    dependent_single = step is not None and step.step_type == "single" and step.depends_on
    if dependent_single and not isinstance(task.input, dict):
        return Err(f"Flow {ctx.flow_slug!r}, step {ctx.step_slug!r}, run {ctx.run_id}: input "
                   "of a dependent step must be an object of dependency outputs keyed by "
                   f"step slug, got {type(task.input).__name__}")
    return Ok(task.input)


def execute(flow: Flow, task: ClaimedTask, conn: ConnectionSource,
            timeout: int = DEFAULT_TIMEOUT_MS, *, encoded: bool = False,
            max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> Result:
    """Run the task's handler; `timeout` is in milliseconds.

    With `encoded=True` the Ok value is the output already encoded as JSON
    bytes, which the executor process sends as they are. Outputs above
    `max_output_bytes` are refused (an Err naming the size and the limit).
    """
    handler = get_handler(flow, task.step_slug)
    if isinstance(handler, Err):
        return handler
    ctx = build_context(task, conn)
    step = flow.get_step(task.step_slug)
    prepared = prepare_input(task, ctx, step)
    if isinstance(prepared, Err):
        return prepared
    with task_logging(ctx):  # log records from the handler carry run, step and attempt
        result = execute_with_timeout(handler.value, prepared.value, ctx, timeout,
                                      with_ctx=step is None or step.takes_ctx)
    if isinstance(result, Err):
        return result
    data = encode_output(result.value)
    if isinstance(data, Err):
        return data
    if len(data.value) > max_output_bytes:
        return Err(f"Output of flow {task.flow_slug!r}, step {task.step_slug!r} is "
                   f"{len(data.value):,} bytes of JSON, over the limit of {max_output_bytes:,} "
                   "(max_output_bytes); store large results elsewhere and return a reference",
                   "OutputTooLarge")
    return data if encoded else Ok(result.value)


def execute_with_timeout(handler: Handler, input: Any, ctx: Context, timeout_ms: int, *,
                         with_ctx: bool = True) -> Result:
    """Call `handler(input, ctx)` (`handler(input)` when `with_ctx` is False,
    for handlers defined without ctx); a `Timeout` err if it overruns `timeout_ms`.

    Not re-entrant: one task at a time per process (the SIGALRM timer and the
    event loop are per process).
    """
    started = time.monotonic()
    args = (input, ctx) if with_ctx else (input,)
    try:
        if inspect.iscoroutinefunction(handler):
            output = _run_awaitable(handler(*args), timeout_ms)
        elif threading.current_thread() is threading.main_thread():
            output = _run_with_alarm(handler, args, timeout_ms)
        else:
            output = _run_in_abandonable_thread(handler, args, ctx, timeout_ms)
        if inspect.isawaitable(output):  # a plain callable that returned a coroutine
            spent_ms = (time.monotonic() - started) * 1000
            output = _run_awaitable(output, max(timeout_ms - spent_ms, 0))
    except _SoftTimeout:
        return Timeout(f"Task timed out after {timeout_ms}ms")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a handler is a failure too
        return Err(serialize_error(exc), type(exc).__name__, format_traceback(exc))
    return Ok(output)


def format_traceback(exc: BaseException) -> str:
    """The exception's traceback as Python prints it, at most MAX_TRACEBACK_BYTES:
    the end (where it was raised) is what matters, so the start is cut."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 - a broken exception must not hide the failure
        return f"<traceback unavailable for {type(exc).__name__}>"
    data = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace")
    if len(data) <= MAX_TRACEBACK_BYTES:
        return data.decode("utf-8")
    kept = data[-MAX_TRACEBACK_BYTES:].decode("utf-8", "ignore")
    return f"[{len(data) - len(kept.encode())} bytes cut]...{kept}"


# SIGALRM soft timeouts. By default each task installs the handler and then
# restores the one it found (the process may use SIGALRM for something else,
# pytest-timeout for one). An executor process, which runs nothing but tasks,
# installs it once with keep_alarm_handler(): a task then only arms and
# disarms the timer, which saves the two signal.signal() calls (~6 us a task).
_alarm_kept = False
_alarm_armed = False
_alarm_fired = False


def keep_alarm_handler() -> None:
    """Install the soft-timeout SIGALRM handler for the life of this process
    (an executor's). Handlers must then leave SIGALRM alone; if one does not,
    its own handler runs at the soft timeout and the supervisor's hard
    deadline still ends the task."""
    global _alarm_kept
    signal.signal(signal.SIGALRM, _on_alarm)
    _alarm_kept = True


def _on_alarm(signum: int, frame: object) -> None:
    global _alarm_fired
    if _alarm_armed:  # a stray SIGALRM between tasks is ignored
        _alarm_fired = True
        raise _SoftTimeout


def _run_with_alarm(handler: Handler, args: tuple[Any, ...], timeout_ms: int) -> Any:
    global _alarm_armed, _alarm_fired
    installed = not _alarm_kept
    previous_handler = signal.signal(signal.SIGALRM, _on_alarm) if installed else None
    _alarm_fired = False
    _alarm_armed = True
    previous_delay, previous_interval = signal.setitimer(
        signal.ITIMER_REAL, max(timeout_ms / 1000, 1e-6))
    started = time.monotonic() if previous_delay else 0.0
    try:
        try:
            output = handler(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _alarm_armed = False
    finally:
        if installed:
            signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:  # someone else's timer (e.g. pytest-timeout): give back what is left
            left = max(previous_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left, previous_interval)
    if _alarm_fired:  # the handler swallowed the exception (bare except) but still overran
        raise _SoftTimeout
    return output


def _run_in_abandonable_thread(handler: Handler, args: tuple[Any, ...], ctx: Context,
                               timeout_ms: int) -> Any:
    """Off the main thread no signal can interrupt the handler: on timeout the
    daemon thread is abandoned, still running, until the supervisor kills the process."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["output"] = handler(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"pgflow-{ctx.step_slug}", daemon=True)
    thread.start()
    thread.join(timeout_ms / 1000)
    if thread.is_alive():
        raise _SoftTimeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["output"]


_runner: asyncio.Runner | None = None
_runner_pid = 0


def _run_awaitable(awaitable: Awaitable[Any], timeout_ms: float) -> Any:
    """Run to completion on this process's one event loop (never a loop inherited by fork)."""
    global _runner, _runner_pid
    if _runner is None or _runner_pid != os.getpid():
        _runner, _runner_pid = asyncio.Runner(), os.getpid()

    async def bounded() -> tuple[bool, Any]:
        limit = asyncio.timeout(timeout_ms / 1000)
        try:
            async with limit:
                output = await awaitable
        except TimeoutError:
            if limit.expired():
                return True, None
            raise  # the handler's own TimeoutError is an ordinary failure
        # expired() here means the handler swallowed the cancellation but still overran
        return limit.expired(), output

    timed_out, output = _runner.run(bounded())
    if timed_out:
        raise _SoftTimeout
    return output


def encode_output(output: Any) -> Result:
    """`Ok(bytes)` holding the output as JSON, or `Err` saying what cannot be stored
    and where (see pgflow.jsondata: plain JSON data only; NaN, Infinity,
    datetimes, UUIDs, sets, strings holding NUL and the like are refused
    rather than silently converted or left to fail the whole completion batch).
    """
    try:
        return Ok(jsondata.encode(output))
    except jsondata.NotJsonError as exc:
        return Err(f"Output is not JSON-serializable: {exc}", "OutputNotSerializable")


def serialize_output(output: Any) -> Result:
    """`Ok(output)` (unchanged, so it compares equal) if it can be stored as JSON, else `Err`."""
    encoded = encode_output(output)
    return Ok(output) if isinstance(encoded, Ok) else encoded


def serialize_error(error: object) -> str:
    """A message for the task's error column, at most MAX_ERROR_BYTES of UTF-8 plus a marker.

    A str stays as is; an exception becomes "TypeName: message"; anything else its repr.
    Characters Postgres text cannot hold (NUL, lone surrogates) are escaped.
    """
    if isinstance(error, str):
        message = error
    elif isinstance(error, BaseException):
        text = _safe(str, error)
        message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    else:
        message = _safe(repr, error)
    data = message.replace("\x00", "\\x00").encode("utf-8", "backslashreplace")
    if len(data) <= MAX_ERROR_BYTES:
        return data.decode("utf-8")
    kept = data[:MAX_ERROR_BYTES].decode("utf-8", "ignore")
    return f"{kept}... [truncated {len(data) - len(kept.encode())} bytes]"


def _safe(render: Callable[[Any], str], value: object) -> str:
    try:
        return render(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        return f"<unprintable {type(value).__name__}>"
