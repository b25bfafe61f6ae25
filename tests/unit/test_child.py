"""executor.child: a real forked child serving frames over pipes (no database)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from executor import child, protocol
from pgflow.flow import Flow
from pgflow.task import ClaimedTask

RUN_ID = uuid.UUID("00000000-0000-0000-0000-0000000000bb")

demo = Flow("demo")


@demo.step()
def echo_size(input, ctx):
    return {"received": len(input["blob"]), "blob": "z" * 20_000_000}


@demo.step()
def boom(input, ctx):
    raise RuntimeError("Something broke")


@demo.step()
def nap(input, ctx):
    time.sleep(10)


@demo.step()
def reads_flow_input(input, ctx):
    return ctx.flow_input


@demo.step()
def returns_set(input, ctx):
    return {1, 2}


@demo.step()
def where(input, ctx):
    return {"pid": os.getpid(), "attempt": ctx.attempt, "input": input}


def request(step_slug: str, input: Any = None, *, flow_slug: str = "demo", task_id: int = 1,
            timeout_ms: int = 5000) -> bytes:
    task = ClaimedTask(task_id=task_id, token=99, run_id=RUN_ID, flow_slug=flow_slug,
                       step_slug=step_slug, task_index=0, attempt=2, timeout_ms=timeout_ms,
                       input=input)
    return protocol.request_for(task)


def read_answer(fd: int) -> dict[str, Any] | None:
    """The next answer as one dict: its meta, and "output" decoded for a success."""
    body = protocol.read_frame(fd)
    if body is None:
        return None
    answer = protocol.decode_answer(body)
    return {**answer.meta, "output": orjson.loads(answer.output)} if answer.ok else answer.meta


@dataclass
class Child:
    pid: int
    to_child: int
    from_child: int

    def ask(self, frame: bytes) -> Any:
        protocol.write_all(self.to_child, frame)
        return read_answer(self.from_child)

    def close_and_wait(self, timeout: float = 5) -> int:
        """Close the request pipe (EOF for the child) and return its exit code."""
        os.close(self.to_child)
        self.to_child = -1
        status = wait_for_exit(self.pid, timeout)
        self.pid = 0
        return os.waitstatus_to_exitcode(status)


@contextmanager
def forked_child(dsn: str | None = None) -> Iterator[Child]:
    request_r, request_w = os.pipe()
    answer_r, answer_w = os.pipe()
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 70
        try:
            os.close(request_w)
            os.close(answer_r)
            child.prepare_child_process(parent_pid)
            code = child.serve(request_r, answer_w, {"demo": demo}, dsn)
        finally:
            os._exit(code)
    os.close(request_r)
    os.close(answer_w)
    handle = Child(pid, request_w, answer_r)
    try:
        yield handle
    finally:
        if handle.to_child != -1:
            os.close(handle.to_child)
        os.close(handle.from_child)
        if handle.pid:
            with suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGKILL)
            os.waitpid(handle.pid, 0)


def test_large_input_and_output_pass_without_deadlock() -> None:
    with forked_child() as worker:
        answer = worker.ask(request("echo_size", {"blob": "y" * 10_000_000}, task_id=41))
    assert answer["ok"] is True
    assert answer["task_id"] == 41
    assert answer["output"]["received"] == 10_000_000
    assert len(answer["output"]["blob"]) == 20_000_000


def test_answers_carry_duration_and_peak_memory() -> None:
    with forked_child() as worker:
        answer = worker.ask(request("where", [1]))
    assert answer["ok"] is True and answer["output"]["input"] == [1]
    assert answer["output"]["pid"] == worker.pid != os.getpid()
    assert isinstance(answer["max_rss_kb"], int) and answer["max_rss_kb"] > 0
    assert 0 <= answer["duration_s"] < 5


def test_a_failing_handler_answers_an_error_and_the_child_keeps_serving() -> None:
    with forked_child() as worker:
        failed = worker.ask(request("boom", task_id=1))
        next_one = worker.ask(request("where", "after", task_id=2))
    assert failed["ok"] is False and failed["task_id"] == 1
    assert failed["error"] == "RuntimeError: Something broke"
    assert failed["timed_out"] is False and "output" not in failed
    assert failed["error_type"] == "RuntimeError"
    assert 'raise RuntimeError("Something broke")' in failed["traceback"]
    assert next_one["ok"] is True and next_one["output"]["input"] == "after"


def test_an_unknown_flow_answers_an_error() -> None:
    with forked_child() as worker:
        answer = worker.ask(request("anything", flow_slug="nope", task_id=9))
        still_alive = worker.ask(request("where", 1))
    assert answer["ok"] is False and answer["task_id"] == 9
    assert "Unknown flow: 'nope'" in answer["error"] and "demo" in answer["error"]
    assert still_alive["ok"] is True


def test_a_malformed_request_answers_an_error() -> None:
    with forked_child() as worker:
        answer = worker.ask(protocol.frame(b'{"task_id": 5}'))
    assert answer["ok"] is False and answer["task_id"] == 5
    assert answer["error"].startswith("Malformed task request")


def test_unencodable_output_answers_an_error() -> None:
    with forked_child() as worker:
        answer = worker.ask(request("returns_set"))
    assert answer["ok"] is False and "not JSON-serializable" in answer["error"]


def test_a_handler_past_its_timeout_answers_timed_out_and_the_child_stops() -> None:
    with forked_child() as worker:
        started = time.monotonic()
        # A second task is already queued behind the one that overruns.
        protocol.write_all(worker.to_child, request("nap", timeout_ms=200))
        protocol.write_all(worker.to_child, request("where", 1, task_id=2))
        answer = read_answer(worker.from_child)
        assert read_answer(worker.from_child) is None, "no answer for the queued task"
        assert os.waitstatus_to_exitcode(wait_for_exit(worker.pid, 5)) == child.EXIT_RETIRE
        worker.pid = 0
    assert time.monotonic() - started < 5
    assert answer["ok"] is False and answer["timed_out"] is True
    assert answer["error"] == "Task timed out after 200ms"


def test_eof_makes_the_child_exit_0() -> None:
    with forked_child() as worker:
        assert worker.ask(request("where", 1))["ok"] is True
        assert worker.close_and_wait() == 0


def test_no_connection_is_opened_unless_a_handler_reads_flow_input() -> None:
    unreachable = "host=/nonexistent-pgflow-socket-dir dbname=nothing connect_timeout=1"
    with forked_child(dsn=unreachable) as worker:
        untouched = worker.ask(request("where", 1))
        needs_db = worker.ask(request("reads_flow_input", {"dep": 1}))
    assert untouched["ok"] is True
    assert needs_db["ok"] is False and "OperationalError" in needs_db["error"]


def test_reading_flow_input_without_a_dsn_names_the_run() -> None:
    with forked_child(dsn=None) as worker:
        answer = worker.ask(request("reads_flow_input", {"dep": 1}))
    assert answer["ok"] is False and str(RUN_ID) in answer["error"]


def test_prepare_child_process_exits_if_the_parent_is_already_gone() -> None:
    pid = os.fork()
    if pid == 0:
        try:
            child.prepare_child_process(expected_parent_pid=1)  # not our parent
            os._exit(0)
        finally:
            os._exit(71)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_child_dies_with_its_parent() -> None:
    """A middle process forks a prepared child, then dies; the child must follow at once."""
    report_r, report_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        code = 72
        try:
            os.close(report_r)
            ready_r, ready_w = os.pipe()
            grandchild = os.fork()
            if grandchild == 0:
                child.prepare_child_process(os.getppid())
                os.write(ready_w, b"!")
                time.sleep(30)
                os._exit(0)
            os.read(ready_r, 1)
            os.write(report_w, grandchild.to_bytes(4, "big"))
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    grandchild = int.from_bytes(os.read(report_r, 4), "big")
    os.close(report_r)
    os.waitpid(middle, 0)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(grandchild):
            time.sleep(0.02)
        assert not _alive(grandchild)
    finally:
        with suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (it is not our child, so we cannot reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigint_is_ignored_and_sigterm_is_back_to_default_in_the_child() -> None:
    # The child inherits the parent's dispositions: SIGINT raising KeyboardInterrupt (Python's
    # default) and, here, SIGTERM ignored; prepare_child_process must undo both.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with forked_child() as worker:
            signal.signal(signal.SIGTERM, previous)
            assert worker.ask(request("where", 1))["ok"] is True  # prepared and serving
            os.kill(worker.pid, signal.SIGINT)
            assert worker.ask(request("where", 2))["output"]["input"] == 2
            os.kill(worker.pid, signal.SIGTERM)
            status = wait_for_exit(worker.pid)
            worker.pid = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def wait_for_exit(pid: int, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not exit within {timeout}s")


def test_an_executor_whose_supervisor_is_gone_leaves_quietly(tmp_path) -> None:
    """It used to print a ConnectionResetError traceback when it answered a
    supervisor that had died meanwhile."""
    import socket

    parent, theirs = socket.socketpair()
    stderr_path = tmp_path / "stderr"
    pid = os.fork()
    if pid == 0:
        parent.close()
        os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT), 2)
        child.main(theirs.fileno(), {"demo": demo}, None, os.getppid())
    theirs.close()
    protocol.write_all(parent.fileno(), request("nap", timeout_ms=5000))
    time.sleep(0.2)  # the handler is asleep: the supervisor "dies"
    parent.close()
    os.kill(pid, signal.SIGALRM)  # cut the nap short (the soft timeout's signal)
    status = wait_for_exit(pid, 10)
    assert stderr_path.read_text() == "", "no traceback"
    assert os.waitstatus_to_exitcode(status) in (child.EXIT_CLEAN, child.EXIT_RETIRE)


@pytest.mark.parametrize("input, problem", [
    (b"[" * 1100 + b"]" * 1100, "depth"),
    (b'{"amount": 1e400}', "infinity"),
])
def test_an_input_python_cannot_decode_fails_its_task_naming_it(input: bytes, problem: str) -> None:
    # Postgres accepts both from SQL (jsonb nests deeper than orjson decodes,
    # and holds numbers beyond a double); the task fails, the executor goes on.
    frame = protocol.encode_request(7, 99, str(RUN_ID).encode(), b"demo", b"where", 0, 1, 5000,
                                    True, input)
    with forked_child() as worker:
        answer = worker.ask(frame)
        still_alive = worker.ask(request("where", 1))
    assert answer["ok"] is False and answer["task_id"] == 7
    assert answer["error_type"] == "InputNotDecodable"
    assert answer["error"].startswith(f"Flow 'demo', step 'where', run {RUN_ID}: the task's input "
                                      "cannot be decoded")
    assert problem in answer["error"]
    assert still_alive["ok"] is True
