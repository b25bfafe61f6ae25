"""The real supervisor, as users run it: subprocesses, signals, kills."""

from __future__ import annotations

import signal
import time

import pytest

from pgflow import Client
from tests.e2e.conftest import pid_alive, query, wait_for_pid_file


def test_200_diamond_runs_complete_with_correct_outputs(dsn, start_supervisor):
    start_supervisor(dsn, processes=2)
    with Client(dsn) as client:
        run_ids = [client.start_flow("e2e_diamond", {"n": i}) for i in range(200)]
        runs = [client.wait(run_id, timeout=60) for run_id in run_ids]
    assert [r.status for r in runs] == ["completed"] * 200
    assert [r.output for r in runs] == [{"d": 5 * (i + 1)} for i in range(200)]


@pytest.mark.parametrize("flow, input", [
    ("e2e_sleepy", {"seconds": 60}),  # sleeping in Python: the soft limit interrupts it
    ("e2e_stuck", {}),  # in C with every signal blocked: only SIGKILL ends it
])
def test_overrunning_handler_is_killed_and_its_run_fails(dsn, start_supervisor, tmp_path, flow,
                                                         input):
    supervisor = start_supervisor(dsn)
    pid_file = tmp_path / "handler.pid"
    with Client(dsn) as client:
        run_id = client.start_flow(flow, {**input, "pid_file": str(pid_file)})
        pid = wait_for_pid_file(pid_file)
        started = time.monotonic()
        run = client.wait(run_id, timeout=10)
    assert time.monotonic() - started < 2.5
    assert (run.status, run.error) == ("failed", "Task timed out after 1000ms")
    time.sleep(0.2)
    assert not pid_alive(pid), "the executor that overran must be gone"
    assert pid not in supervisor.wait_for_children(2), "a fresh executor takes its place"


def test_executor_that_exits_or_is_killed_fails_the_attempt_and_is_replaced(dsn, start_supervisor):
    supervisor = start_supervisor(dsn)
    with Client(dsn) as client:
        exited = client.start_flow("e2e_crash", {"how": "exit"})
        killed = client.start_flow("e2e_crash", {"how": "kill"})
        runs = {how: client.wait(run_id, timeout=20) for how, run_id in
                (("exit", exited), ("kill", killed))}
    for run in runs.values():
        assert run.status == "completed"
        assert run.output == {"crash_once": "recovered on attempt 2"}
    errors = dict(query(dsn, "select r.input ->> 'how', t.errors -> 0 ->> 'error' from pgflow.tasks t "
                             "join pgflow.runs r using (run_id)"))
    assert "exited with code 1 while running this task" in errors["exit"]
    assert "was killed by SIGKILL (9) while running this task" in errors["kill"]
    assert len(supervisor.wait_for_children(2)) == 2


def test_10mb_input_and_20mb_output(dsn, start_supervisor):
    start_supervisor(dsn)
    with Client(dsn) as client:
        run = client.wait(client.start_flow("e2e_big", {"blob": "x" * 10_000_000}), timeout=60)
    assert run.status == "completed", run.error
    assert run.output["grow"]["received"] == 10_000_000
    assert len(run.output["grow"]["blob"]) == 20_000_000


def test_sigterm_drains_exits_zero_and_runs_finish_after_restart(dsn, start_supervisor):
    supervisor = start_supervisor(dsn, "--prefetch", "4", processes=2)
    with Client(dsn) as client:
        run_ids = [client.start_flow("e2e_slow", {"seconds": 0.5}) for _ in range(12)]
        time.sleep(0.3)  # two tasks running, four buffered
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(15) == 0
        statuses = dict(query(dsn, "select status, count(*) from pgflow.tasks group by status"))
        assert statuses.get("started", 0) == 0, "nothing is left held by the stopped supervisor"
        assert statuses["completed"] >= 2, "running tasks were allowed to finish"
        attempts = query(dsn, "select max(attempt) from pgflow.tasks")[0][0]
        assert attempts == 1, "released tasks were not charged an attempt"
        start_supervisor(dsn, processes=2)
        runs = [client.wait(run_id, timeout=30) for run_id in run_ids]
    assert {r.status for r in runs} == {"completed"}


def test_hup_reloads_new_code_without_losing_a_run(dsn, start_supervisor, tmp_path):
    version_file = tmp_path / "version"
    version_file.write_text("v1")
    supervisor = start_supervisor(dsn, env={"PGFLOW_TEST_E2E_VERSION_FILE": str(version_file)})
    with Client(dsn) as client:
        assert client.wait(client.start_flow("e2e_version", None), 10).output == {"which": "v1"}
        slow_runs = [client.start_flow("e2e_slow", {"seconds": 0.3}) for _ in range(6)]
        version_file.write_text("v2")
        log_size = len(supervisor.log())
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for_log("serving", after=log_size, timeout=20)
        assert supervisor.proc.poll() is None, "same process, re-executed in place"
        assert client.wait(client.start_flow("e2e_version", None), 10).output == {"which": "v2"}
        assert {client.wait(r, 30).status for r in slow_runs} == {"completed"}


def test_sigkill_of_the_supervisor_then_a_new_one_finishes_every_run(dsn, start_supervisor):
    lease = ["--lease-grace", "1", "--heartbeat-interval", "0.5"]
    first = start_supervisor(dsn, *lease, processes=2)
    with Client(dsn) as client:
        run_ids = [client.start_flow("e2e_slow", {"seconds": 0.4}) for _ in range(10)]
        time.sleep(0.6)
        executors = first.children()
        first.signal(signal.SIGKILL)
        first.wait(5)
        time.sleep(0.3)
        assert not any(pid_alive(pid) for pid in executors), "executors die with their parent"
        start_supervisor(dsn, *lease, processes=2)
        runs = [client.wait(run_id, timeout=60) for run_id in run_ids]
    assert {r.status for r in runs} == {"completed"}
    rows = query(dsn, "select status, count(*) from pgflow.tasks group by status")
    assert rows == [("completed", 10)]
    lost = query(dsn, "select count(*) from pgflow.tasks where attempt > 1")[0][0]
    assert lost >= 1, "the killed supervisor's tasks were requeued, counting the lost attempt"


def test_ttin_and_ttou_change_the_pool_size(dsn, start_supervisor):
    supervisor = start_supervisor(dsn, processes=2)
    assert len(supervisor.wait_for_children(2)) == 2
    supervisor.signal(signal.SIGTTIN)
    assert len(supervisor.wait_for_children(3)) == 3
    for _ in range(4):
        supervisor.signal(signal.SIGTTOU)
        time.sleep(0.1)
    assert len(supervisor.wait_for_children(1)) == 1, "never below one"
    with Client(dsn) as client:
        assert client.wait(client.start_flow("e2e_noop", 1), 10).status == "completed"


def test_two_supervisors_split_1000_runs_without_loss_or_duplicates(dsn, start_supervisor):
    first = start_supervisor(dsn, processes=1, wait=False)
    second = start_supervisor(dsn, processes=1, wait=False)
    first.wait_ready()
    second.wait_ready()
    with Client(dsn) as client, client.connection().pipeline():
        for i in range(1000):
            client.connection().execute("select pgflow.start_flow('e2e_noop', %s::jsonb)", (str(i),))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = query(dsn, "select count(*) from pgflow.runs where status = 'completed'")[0][0]
        if done == 1000:
            break
        time.sleep(0.2)
    assert done == 1000
    rows = query(dsn, "select count(*), count(distinct task_id), max(attempt), "
                      "count(distinct worker_id) from pgflow.tasks where status = 'completed'")
    assert rows == [(1000, 1000, 1, 2)], "each task completed once, both supervisors worked"
    outputs = query(dsn, "select count(*) from pgflow.runs where output = jsonb_build_object("
                         "'echo', input)")
    assert outputs == [(1000,)]


def test_unimportable_flow_module_stops_with_a_clear_error(dsn, start_supervisor):
    supervisor = start_supervisor(dsn, flows="no_such_module_here", wait=False)
    assert supervisor.wait(15) == 78
    assert "cannot import flow module 'no_such_module_here'" in supervisor.log()


def test_a_shape_conflict_stops_with_a_clear_error(dsn, start_supervisor):
    from pgflow import Flow

    other = Flow("e2e_noop")
    other.step(slug="something_else")(lambda input, ctx: input)
    with Client(dsn) as client:
        client.register(other)
    supervisor = start_supervisor(dsn, wait=False)
    assert supervisor.wait(15) == 78
    log = supervisor.log()
    assert "Flow 'e2e_noop' is already registered with a different shape" in log
    assert "step 'echo' is new" in log and "replace=True" in log


def test_tasks_queued_behind_a_killed_task_run_elsewhere(dsn, start_supervisor, tmp_path):
    start_supervisor(dsn, "--executor-depth", "4", processes=1)
    with Client(dsn) as client:
        stuck = client.start_flow("e2e_sleepy", {"seconds": 60})
        time.sleep(0.2)  # the sleeper is running; the next ones queue behind it
        quick = [client.start_flow("e2e_noop", i) for i in range(3)]
        assert client.wait(stuck, timeout=10).error == "Task timed out after 1000ms"
        runs = [client.wait(run_id, timeout=10) for run_id in quick]
    assert [r.output for r in runs] == [{"echo": i} for i in range(3)]
    attempts = query(dsn, "select max(attempt) from pgflow.tasks where flow_slug = 'e2e_noop'")
    assert attempts == [(1,)], "tasks that never started were not charged an attempt"


@pytest.mark.parametrize("limit, tasks_per_process", [
    (["--max-tasks-per-child", "2"], 2),
    (["--max-memory-per-child", "1"], 1),  # every executor is above 1 MiB after a task
])
def test_executors_are_recycled(dsn, start_supervisor, limit, tasks_per_process):
    start_supervisor(dsn, *limit, processes=1)
    with Client(dsn) as client:
        runs = [client.wait(client.start_flow("e2e_slow", {"seconds": 0.01}), timeout=10)
                for _ in range(6)]
    pids = [run.output["work"]["pid"] for run in runs]
    assert len(set(pids)) == 6 // tasks_per_process, pids
    assert all(run.output["work"]["attempt"] == 1 for run in runs)
