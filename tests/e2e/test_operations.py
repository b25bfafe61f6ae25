"""Operating a real supervisor from the command line: cancel kills running
handlers (and so does a run's failure), retry, retention, worker reports,
and the worker row marked stopped however the supervisor exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from pgflow import Client
from tests.e2e.conftest import PGFLOW, pid_alive, query, wait_for_pid_file

OPS = "e2e_ops_flows"


def pgflow(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PGFLOW), *args, "--database-url", dsn], capture_output=True,
                          text=True, timeout=60)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout}s")


def test_cancel_kills_the_running_handler_within_a_second(dsn, start_supervisor, tmp_path):
    supervisor = start_supervisor(dsn, flows=OPS, processes=2)
    before = supervisor.wait_for_children(2)
    pid_file = tmp_path / "nap.pid"
    with Client(dsn) as client:
        run_id = client.start_flow("ops_long_nap", {"seconds": 60, "pid_file": str(pid_file)})
        pid = wait_for_pid_file(pid_file)
        assert pid in before
        cancel = pgflow(dsn, "cancel", str(run_id))
        cancelled_at = time.monotonic()
        assert (cancel.returncode, cancel.stdout) == (0, f"run {run_id}: cancelled\n")
        wait_until(lambda: not pid_alive(pid), timeout=5)
        assert time.monotonic() - cancelled_at < 1.0, "the executor is killed at once"
        after = supervisor.wait_for_children(2)
        assert pid not in after, "a fresh executor takes its place"
        supervisor.wait_for_log("stopped the running tasks of 1 cancelled runs")
        time.sleep(1.0)  # long enough for a retry or a late answer to show
        run = client.get_run(run_id)
    assert run.status == "cancelled"
    assert (run.steps["nap"].status, run.steps["nap"].attempts, run.steps["nap"].errors) == (
        "cancelled", 1, [])
    assert query(dsn, "select status from pgflow.tasks") == [("cancelled",)]
    assert query(dsn, "select count(*) from pgflow.queue") == [(0,)], "never retried"


def test_a_failing_task_stops_the_running_siblings_of_its_run(dsn, start_supervisor, tmp_path):
    start_supervisor(dsn, flows=OPS, processes=3)
    pid_file = tmp_path / "sleeper.pid"
    with Client(dsn) as client:
        run_id = client.start_flow("ops_siblings", [{"pid_file": str(pid_file)}, {"fail": True}])
        pid = wait_for_pid_file(pid_file)
        run = client.wait(run_id, timeout=10)
        assert (run.status, run.failed_step) == ("failed", "sibling")
        wait_until(lambda: not pid_alive(pid), timeout=2)
    statuses = sorted(query(dsn, "select task_index, status from pgflow.tasks"))
    assert statuses == [(0, "cancelled"), (1, "failed")]


def test_retry_from_the_command_line_runs_only_what_failed(dsn, start_supervisor, tmp_path):
    start_supervisor(dsn, flows=OPS, processes=2)
    calls, broken = tmp_path / "calls", tmp_path / "broken"
    broken.write_text("")
    with Client(dsn) as client:
        run_id = client.start_flow("ops_switched", {"calls_file": str(calls),
                                                    "broken_file": str(broken)})
        assert client.wait(run_id, timeout=10).status == "failed"
        broken.unlink()
        retry = pgflow(dsn, "retry", str(run_id), "--json")
        assert retry.returncode == 0, retry.stderr
        document = json.loads(retry.stdout)
        assert (document["status"], document["retry_count"], document["steps"]) == (
            "started", 1, ["fragile"])
        run = client.wait(run_id, timeout=10)
    assert (run.status, run.output) == ("completed", {"fragile": "fixed"})
    assert calls.read_text() == "fragile\nfragile\n"
    assert run.steps["prepare"].attempts == 1
    assert [e["error"] for e in run.steps["fragile"].errors] == ["RuntimeError: still broken"]


def test_retention_prunes_old_finished_runs(dsn, start_supervisor):
    with Client(dsn) as client:
        client.migrate()
    supervisor = start_supervisor(dsn, "--retention", "1d", flows=OPS, processes=1)
    with Client(dsn) as client:
        ids = [client.start_flow("ops_quick", i) for i in range(5)]
        for run_id in ids:
            client.wait(run_id, timeout=10)
        client.connection().execute(
            "update pgflow.runs set started_at = started_at - interval '2 days', "
            "completed_at = completed_at - interval '2 days' where run_id = any (%s)", (ids[:3],))
        supervisor.wait_for_log("retention: pruned 3 runs (3 tasks) finished more than 1d ago",
                                timeout=20)
        remaining = {r.run_id for r in client.list_runs()}
    assert remaining == set(ids[3:])


def test_workers_show_each_supervisors_executors_and_rate(dsn, start_supervisor):
    supervisor = start_supervisor(dsn, "--heartbeat-interval", "0.3", flows=OPS, processes=2)
    with Client(dsn) as client:
        for run_id in client.start_flows("ops_quick", list(range(50))):
            client.wait(run_id, timeout=10)

    def reported():
        shown = pgflow(dsn, "workers", "--json", "--heartbeat-interval", "0.3")
        rows = [w for w in json.loads(shown.stdout) if w["pid"] == supervisor.pid]
        return rows[0] if rows and rows[0]["attempts_succeeded"] == 50 else None

    worker = wait_until(reported, timeout=10, interval=0.2)
    assert (worker["state"], worker["executors"], worker["executors_busy"]) == ("live", 2, 0)
    assert worker["attempts_failed"] == 0 and worker["attempts_per_second"] is not None


def worker_state(dsn: str, pid: int) -> list[tuple]:
    return query(dsn, "select stopped_at is not null from pgflow.workers where pid = %s", pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_a_supervisor_marks_itself_stopped_when_signalled(dsn, start_supervisor, sig):
    supervisor = start_supervisor(dsn, flows=OPS)
    wait_until(lambda: worker_state(dsn, supervisor.pid) == [(False,)])
    supervisor.signal(sig)
    assert supervisor.wait(15) == 0
    assert worker_state(dsn, supervisor.pid) == [(True,)]


def test_a_reload_stops_the_old_worker_row_and_registers_a_new_one(dsn, start_supervisor):
    supervisor = start_supervisor(dsn, flows=OPS)
    wait_until(lambda: worker_state(dsn, supervisor.pid) == [(False,)])
    supervisor.signal(signal.SIGHUP)
    # Same pid after the re-exec: one stopped row, then a live one.
    wait_until(lambda: sorted(worker_state(dsn, supervisor.pid)) == [(False,), (True,)])


def test_a_supervisor_that_cannot_serve_leaves_no_live_worker(dsn, start_supervisor):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = start_supervisor(dsn, "--metrics-port", str(port), flows=OPS, wait=False)
        assert supervisor.wait(30) == 1
    assert "metrics" in supervisor.log()
    assert query(dsn, "select count(*) from pgflow.workers where stopped_at is null") == [(0,)]
    assert os.path.exists(supervisor.log_path)
