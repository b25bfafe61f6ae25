"""executor.executor: one task's lifecycle, without processes or a database."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from typing import Any

import orjson
import pytest

from executor import executor
from executor.executor import (
    build_context,
    encode_output,
    execute,
    execute_with_timeout,
    get_handler,
    prepare_input,
    serialize_error,
    serialize_output,
)
from executor.result import Err, Ok, Timeout
from pgflow.context import Context
from pgflow.flow import Flow
from pgflow.task import ClaimedTask

RUN_ID = uuid.UUID("00000000-0000-0000-0000-0000000000aa")


def make_task(step_slug: str = "root", input: Any = None, **overrides: Any) -> ClaimedTask:
    fields: dict[str, Any] = dict(task_id=7, token=99, run_id=RUN_ID, flow_slug="demo", step_slug=step_slug,
                                  task_index=0, attempt=1, timeout_ms=1000, input=input,
                                  input_is_flow_input=False)
    return ClaimedTask(**{**fields, **overrides})


def make_ctx(step_slug: str = "root") -> Context:
    return Context(run_id=RUN_ID, flow_slug="demo", step_slug=step_slug)


@pytest.fixture
def flow() -> Flow:
    flow = Flow("demo")

    @flow.step()
    def root(input, ctx):
        return {"doubled": input["n"] * 2}

    @flow.step(depends_on=["root"])
    def dependent(deps, ctx):
        return deps["root"]["doubled"] + 1

    @flow.map(array="root")
    def each(element, ctx):
        return [element, ctx.task_index]

    @flow.step()
    def boom(input, ctx):
        raise RuntimeError("Something broke")

    @flow.step()
    def exits(input, ctx):
        raise SystemExit(3)

    @flow.step()
    def interrupted(input, ctx):
        raise KeyboardInterrupt

    @flow.step()
    def returns_set(input, ctx):
        return {"tags": {"a"}}

    @flow.step()
    def reads_flow_input(input, ctx):
        return ctx.flow_input

    return flow


class FakeConnection:
    """Stands in for a psycopg connection: counts queries, returns one row."""

    def __init__(self, row: Any) -> None:
        self.row = row
        self.queries: list[tuple[str, dict[str, Any]]] = []

    def execute(self, sql: str, params: dict[str, Any]) -> FakeConnection:
        self.queries.append((sql, params))
        return self

    def fetchone(self) -> Any:
        return self.row


# -- get_handler --------------------------------------------------------------


def test_get_handler_returns_the_steps_handler(flow: Flow) -> None:
    assert get_handler(flow, "root") == Ok(flow.get_step("root").handler)


def test_get_handler_names_a_missing_step(flow: Flow) -> None:
    assert get_handler(flow, "nonexistent") == Err("No handler defined for step: 'nonexistent'")


# -- build_context --------------------------------------------------------------


def test_context_carries_where_the_task_stands() -> None:
    ctx = build_context(make_task("each", input=5, task_index=3, attempt=2), None)
    assert (ctx.run_id, ctx.flow_slug, ctx.step_slug, ctx.task_index, ctx.attempt) == (
        RUN_ID, "demo", "each", 3, 2)


def test_flow_input_carried_by_the_claim_needs_no_query() -> None:
    conn = FakeConnection(({"n": 1},))
    ctx = build_context(make_task(input={"n": 2}, input_is_flow_input=True), conn)
    assert ctx.flow_input == {"n": 2}
    assert conn.queries == []


def test_flow_input_is_loaded_lazily_once() -> None:
    conn = FakeConnection(({"n": 1},))
    ctx = build_context(make_task("dependent", input={"root": 1}), conn)
    assert conn.queries == []
    assert ctx.flow_input == {"n": 1}
    assert ctx.flow_input == {"n": 1}
    assert len(conn.queries) == 1
    sql, params = conn.queries[0]
    assert "pgflow.runs" in sql and params == {"run_id": RUN_ID}


def test_connection_factory_is_called_only_when_flow_input_is_read() -> None:
    calls = []

    def connect() -> FakeConnection:
        calls.append(1)
        return FakeConnection({"input": [1, 2]})  # a dict_row connection works too

    ctx = build_context(make_task("dependent", input={"root": 1}), connect)
    assert calls == []
    assert ctx.flow_input == [1, 2]
    assert ctx.flow_input == [1, 2]
    assert calls == [1]


def test_flow_input_without_a_connection_names_run_and_step() -> None:
    ctx = build_context(make_task("dependent", input={"root": 1}), None)
    with pytest.raises(RuntimeError, match=f"Run {RUN_ID}, step 'dependent'"):
        _ = ctx.flow_input


# -- prepare_input --------------------------------------------------------------


def test_root_step_gets_the_flow_input(flow: Flow) -> None:
    task = make_task("root", input={"n": 1}, input_is_flow_input=True)
    assert prepare_input(task, make_ctx(), flow.get_step("root")) == Ok({"n": 1})


def test_dependent_step_gets_the_deps_map(flow: Flow) -> None:
    task = make_task("dependent", input={"root": {"doubled": 2}})
    assert prepare_input(task, make_ctx(), flow.get_step("dependent")) == Ok(
        {"root": {"doubled": 2}})


def test_map_task_gets_its_element_whatever_its_type(flow: Flow) -> None:
    for element in (3, "x", None, [1], {"a": 1}):
        task = make_task("each", input=element, task_index=1)
        assert prepare_input(task, make_ctx("each"), flow.get_step("each")) == Ok(element)


def test_dependent_step_given_a_non_object_is_an_error_naming_flow_step_run(flow: Flow) -> None:
    task = make_task("dependent", input=[1, 2])
    result = prepare_input(task, build_context(task, None), flow.get_step("dependent"))
    assert isinstance(result, Err)
    assert "'demo'" in result.error and "'dependent'" in result.error
    assert str(RUN_ID) in result.error and "list" in result.error


# -- serialize_output -----------------------------------------------------------


@pytest.mark.parametrize("output", [0, False, "", [], {}, None, 0.0])
def test_falsy_outputs_are_outputs(output: Any) -> None:
    result = serialize_output(output)
    assert isinstance(result, Ok) and result.value == output and type(result.value) is type(output)


def test_a_set_is_not_serializable_and_the_error_says_where() -> None:
    result = serialize_output({"items": [1, {2, 3}]})
    assert isinstance(result, Err)
    assert result.error.startswith("Output is not JSON-serializable: ")
    assert "set" in result.error and "$.items[1]" in result.error


def test_an_arbitrary_object_is_not_serializable() -> None:
    class Thing:
        pass

    result = serialize_output(Thing())
    assert isinstance(result, Err) and "Thing" in result.error


def test_non_string_keys_are_refused() -> None:
    result = serialize_output({"ok": {1: "one"}})
    assert isinstance(result, Err)
    assert "$.ok" in result.error and "int" in result.error


def test_nul_in_a_string_is_refused_but_an_escaped_backslash_u0000_is_fine() -> None:
    assert isinstance(serialize_output({"a": "x\x00y"}), Err)
    assert serialize_output("\\u0000") == Ok("\\u0000")


def test_encode_output_returns_the_encoded_json() -> None:
    result = encode_output({"a": [1, None]})
    assert isinstance(result, Ok) and isinstance(result.value, bytes)
    assert orjson.loads(result.value) == {"a": [1, None]}


# -- serialize_error ------------------------------------------------------------


def test_a_string_error_stays_as_is() -> None:
    assert serialize_error("Connection failed") == "Connection failed"


def test_an_exception_becomes_type_and_message() -> None:
    assert serialize_error(RuntimeError("Something broke")) == "RuntimeError: Something broke"
    assert serialize_error(ValueError()) == "ValueError"


def test_other_values_become_their_repr() -> None:
    assert serialize_error({"code": 42}) == "{'code': 42}"
    assert serialize_error(None) == "None"


def test_a_long_message_is_truncated_with_a_visible_marker() -> None:
    message = serialize_error("é" * 10_000)  # 20,000 bytes of UTF-8
    kept, marker = message.split("... [truncated ")
    assert kept == "é" * 4096
    assert marker == f"{20_000 - 8192} bytes]"
    assert serialize_error("x" * 8192) == "x" * 8192


# -- execute_with_timeout ---------------------------------------------------------


def test_a_handler_past_its_timeout_is_interrupted_and_its_finally_runs() -> None:
    cleaned_up = []

    def slow(input, ctx):
        try:
            time.sleep(5)
        finally:
            cleaned_up.append(True)

    started = time.monotonic()
    result = execute_with_timeout(slow, None, make_ctx(), 100)
    assert result == Timeout("Task timed out after 100ms")
    assert result.timed_out and isinstance(result, Err)
    assert cleaned_up == [True]
    assert time.monotonic() - started < 1


def test_a_handler_that_catches_the_timeout_is_still_reported_as_timed_out() -> None:
    def careless(input, ctx):
        try:
            time.sleep(5)
        except Exception:
            return "swallowed by except Exception"

    def reckless(input, ctx):
        try:
            time.sleep(5)
        except BaseException:
            return "swallowed by a bare except"

    assert execute_with_timeout(careless, None, make_ctx(), 100).timed_out
    assert execute_with_timeout(reckless, None, make_ctx(), 100).timed_out


def test_the_previous_alarm_handler_and_timer_are_restored() -> None:
    def previous(signum, frame):
        pass

    old_handler = signal.signal(signal.SIGALRM, previous)
    old_timer = signal.setitimer(signal.ITIMER_REAL, 60)
    try:
        assert execute_with_timeout(lambda i, c: i + 1, 1, make_ctx(), 100) == Ok(2)
        assert signal.getsignal(signal.SIGALRM) is previous
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 50 < remaining <= 60
    finally:
        signal.setitimer(signal.ITIMER_REAL, *old_timer)
        signal.signal(signal.SIGALRM, old_handler)


def test_an_executor_process_keeps_one_alarm_handler_for_all_its_tasks(monkeypatch) -> None:
    """keep_alarm_handler() (what an executor process calls once): each task
    only arms the timer, timeouts still fire task after task, and a stray
    SIGALRM between tasks does nothing."""
    def slow(input, ctx):
        time.sleep(5)

    monkeypatch.setattr(executor, "_alarm_kept", False)
    old_handler = signal.getsignal(signal.SIGALRM)
    try:
        executor.keep_alarm_handler()
        for _ in range(2):
            assert execute_with_timeout(slow, None, make_ctx(), 50).timed_out
            assert execute_with_timeout(lambda i, c: i + 1, 1, make_ctx(), 50) == Ok(2)
        assert signal.getsignal(signal.SIGALRM) is executor._on_alarm, "never uninstalled"
        signal.raise_signal(signal.SIGALRM)  # between tasks: ignored
        assert execute_with_timeout(lambda i, c: i, 3, make_ctx(), 50) == Ok(3)
    finally:
        signal.signal(signal.SIGALRM, old_handler)


def test_off_the_main_thread_the_handler_is_abandoned_at_the_timeout() -> None:
    release = threading.Event()
    results: list[Any] = []

    def blocked(input, ctx):
        release.wait(5)
        return "late"

    caller = threading.Thread(
        target=lambda: results.append(execute_with_timeout(blocked, None, make_ctx(), 100)))
    started = time.monotonic()
    caller.start()
    caller.join(5)
    release.set()
    assert results == [Timeout("Task timed out after 100ms")]
    assert time.monotonic() - started < 1


def test_off_the_main_thread_results_and_errors_come_back() -> None:
    results: list[Any] = []

    def run() -> None:
        results.append(execute_with_timeout(lambda i, c: i * 2, 21, make_ctx(), 1000))
        results.append(execute_with_timeout(lambda i, c: 1 / 0, 0, make_ctx(), 1000))

    caller = threading.Thread(target=run)
    caller.start()
    caller.join(5)
    assert results == [Ok(42), Err("ZeroDivisionError: division by zero")]


def test_an_async_handler_runs_to_completion() -> None:
    async def handler(input, ctx):
        await asyncio.sleep(0.01)
        return {"step": ctx.step_slug, "n": input}

    assert execute_with_timeout(handler, 3, make_ctx(), 1000) == Ok({"step": "root", "n": 3})
    # the event loop is reused, not closed, between tasks
    assert execute_with_timeout(handler, 4, make_ctx(), 1000) == Ok({"step": "root", "n": 4})


def test_an_async_handler_past_its_timeout_is_cancelled_and_its_finally_runs() -> None:
    cleaned_up = []

    async def slow(input, ctx):
        try:
            await asyncio.sleep(5)
        finally:
            cleaned_up.append(True)

    started = time.monotonic()
    assert execute_with_timeout(slow, None, make_ctx(), 100) == Timeout(
        "Task timed out after 100ms")
    assert cleaned_up == [True]
    assert time.monotonic() - started < 1


def test_an_async_handlers_own_timeout_error_is_an_ordinary_failure() -> None:
    async def handler(input, ctx):
        raise TimeoutError("upstream took too long")

    result = execute_with_timeout(handler, None, make_ctx(), 1000)
    assert result == Err("TimeoutError: upstream took too long")
    assert not result.timed_out


def test_a_sync_callable_returning_a_coroutine_is_awaited() -> None:
    async def work(n):
        return n + 1

    assert execute_with_timeout(lambda i, c: work(i), 1, make_ctx(), 1000) == Ok(2)


# -- execute ----------------------------------------------------------------------


def test_execute_runs_a_root_step(flow: Flow) -> None:
    task = make_task("root", input={"n": 4}, input_is_flow_input=True)
    assert execute(flow, task, None) == Ok({"doubled": 8})


def test_execute_runs_a_dependent_step_and_a_map_task(flow: Flow) -> None:
    assert execute(flow, make_task("dependent", input={"root": {"doubled": 8}}), None) == Ok(9)
    assert execute(flow, make_task("each", input="x", task_index=2), None) == Ok(["x", 2])


def test_execute_never_raises_for_a_handler_exception(flow: Flow) -> None:
    assert execute(flow, make_task("boom"), None) == Err("RuntimeError: Something broke")


def test_system_exit_from_a_handler_is_a_failure(flow: Flow) -> None:
    assert execute(flow, make_task("exits"), None) == Err("SystemExit: 3")


def test_keyboard_interrupt_passes_through(flow: Flow) -> None:
    with pytest.raises(KeyboardInterrupt):
        execute(flow, make_task("interrupted"), None)


def test_execute_reports_unknown_steps_and_bad_outputs(flow: Flow) -> None:
    assert execute(flow, make_task("nope"), None) == Err("No handler defined for step: 'nope'")
    result = execute(flow, make_task("returns_set"), None)
    assert isinstance(result, Err) and "not JSON-serializable" in result.error


def test_execute_reports_a_missing_connection_as_a_task_error(flow: Flow) -> None:
    result = execute(flow, make_task("reads_flow_input", input={"n": 1}), None)
    assert isinstance(result, Err) and f"Run {RUN_ID}" in result.error


def test_execute_passes_the_timeout_in_milliseconds(flow: Flow) -> None:
    slow = Flow("slow")

    @slow.step()
    def nap(input, ctx):
        time.sleep(2)

    result = execute(slow, make_task("nap", flow_slug="slow"), None, timeout=50)
    assert result == Timeout("Task timed out after 50ms")


def test_encoded_execute_returns_the_output_as_json(flow: Flow) -> None:
    task = make_task("root", input={"n": 1}, input_is_flow_input=True)
    result = execute(flow, task, None, encoded=True)
    assert isinstance(result, Ok)
    assert orjson.loads(result.value) == {"doubled": 2}


def test_an_output_over_the_limit_is_refused_before_it_leaves_the_executor(flow: Flow) -> None:
    task = make_task("root", input={"n": 1}, input_is_flow_input=True)
    result = execute(flow, task, None, encoded=True, max_output_bytes=5)
    assert isinstance(result, Err) and result.error_type == "OutputTooLarge"
    assert "13 bytes of JSON, over the limit of 5" in result.error  # {"doubled":2}
    assert "flow 'demo', step 'root'" in result.error


def test_a_failure_keeps_the_exception_type_and_where_it_was_raised() -> None:
    def handler(input, ctx):
        raise KeyError("numbers")

    result = execute_with_timeout(handler, None, make_ctx(), 1000)
    assert isinstance(result, Err) and result.error == "KeyError: 'numbers'"
    assert result.error_type == "KeyError"
    assert result.traceback is not None and 'raise KeyError("numbers")' in result.traceback


def test_the_event_loop_is_not_shared_with_a_forked_parent(monkeypatch) -> None:
    async def handler(input, ctx):
        return asyncio.get_running_loop()

    first = execute_with_timeout(handler, None, make_ctx(), 1000)
    again = execute_with_timeout(handler, None, make_ctx(), 1000)
    monkeypatch.setattr(executor, "_runner_pid", -1)  # as if this process had just forked
    inherited_runner = executor._runner
    after_fork = execute_with_timeout(handler, None, make_ctx(), 1000)
    inherited_runner.close()
    assert isinstance(first, Ok) and isinstance(after_fork, Ok)
    assert first.value is again.value
    assert after_fork.value is not first.value
