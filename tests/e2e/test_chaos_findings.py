"""Faults the chaos soak (bench/chaos.py) found, each as a minimal test."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

from pgflow import Client
from tests.e2e.conftest import pid_alive, query, wait_for_pid_file


def wait_until(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def test_losing_the_listen_connection_during_a_round_does_not_wedge_the_supervisor(
        dsn, start_supervisor):
    """Found by the soak: after a Postgres restart or dropped connections, a
    supervisor stayed connected but never sent another round (ending with "N
    answers could not be written"), or died of `AssertionError: ()` in the
    claim's parser. When the loss was noticed on the LISTEN connection while
    a round was in flight on the working one, the working connection was
    closed without failing the round's statements: the new connection never
    looked idle (no round ever again), and its next readable event handed the
    stale statements empty results (a claim crashed; answers were dropped as
    stale). Here the round is held in flight by a lock on the worker's row,
    which the heartbeat waits for, and only the LISTEN connection is dropped."""
    supervisor = start_supervisor(dsn, "--heartbeat-interval", "0.2", processes=1)
    with Client(dsn) as client, psycopg.connect(dsn) as holder:
        assert client.wait(client.start_flow("e2e_noop", 1), timeout=20).status == "completed"
        holder.execute("select 1 from pgflow.workers where pid = %s for update", (supervisor.pid,))
        wait_until(lambda: query(dsn, "select count(*) from pg_stat_activity where datname = "
                                      "current_database() and application_name like "
                                      "'pgflow supervisor%%' and wait_event_type = 'Lock'")[0][0],
                   what="a round waiting for the worker's row")
        dropped = query(dsn, "select pg_terminate_backend(pid) from pg_stat_activity where "
                             "datname = current_database() and application_name like "
                             "'pgflow supervisor%%' and wait_event_type is distinct from 'Lock'")
        assert dropped == [(True,)], "only the LISTEN connection is dropped"
        supervisor.wait_for_log("database connection lost")
        holder.rollback()
        supervisor.wait_for_log("database connection restored", timeout=30)
        run = client.wait(client.start_flow("e2e_noop", 2), timeout=30)
    assert run.status == "completed"


def _gone_or_killed(pid: int) -> None:
    """Wait up to 5 s for `pid` to go; kill it anyway before failing."""
    try:
        wait_until(lambda: not pid_alive(pid), timeout=5, what=f"process {pid} gone")
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.xfail(strict=True, reason="a SIGKILLed supervisor's executors die (PR_SET_PDEATHSIG) "
                   "but what their handlers forked lives on; only systemd's cgroup kill (the unit's "
                   "KillMode=mixed) cleans it up")
def test_what_a_handler_forked_dies_with_a_killed_supervisor(dsn, start_supervisor, tmp_path):
    supervisor = start_supervisor(dsn, flows="e2e_chaos_findings", processes=1)
    pid_file = tmp_path / "grandchild"
    with Client(dsn) as client:
        client.start_flow("e2e_forks_and_waits", {"pid_file": str(pid_file)})
        grandchild = wait_for_pid_file(pid_file)
        supervisor.signal(signal.SIGKILL)
        supervisor.wait()
    _gone_or_killed(grandchild)


def test_what_a_handler_forked_dies_with_its_executor_killed_from_outside(dsn, start_supervisor,
                                                                          tmp_path):
    start_supervisor(dsn, flows="e2e_chaos_findings", processes=1)
    pid_file, executor_pid_file = tmp_path / "grandchild", tmp_path / "executor"
    with Client(dsn) as client:
        run_id = client.start_flow("e2e_forks_and_waits", {
            "pid_file": str(pid_file), "executor_pid_file": str(executor_pid_file)})
        grandchild = wait_for_pid_file(pid_file)
        os.kill(wait_for_pid_file(executor_pid_file), signal.SIGKILL)
        assert client.wait(run_id, timeout=20).status == "failed"
    _gone_or_killed(grandchild)
