"""The supervisor under the faults an adversarial campaign found (issue 10):
each test failed on the first supervisor and must keep passing."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import psycopg

from pgflow import Client
from tests.e2e.conftest import APP, PGFLOW, pid_alive, query, wait_for_pid_file


def wait_until(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def test_a_paused_supervisor_comes_back_without_crashing_and_loses_nothing(dsn, start_supervisor):
    """Paused past its leases (SIGSTOP, a long GC, a VM migration), it comes back
    holding stale copies of tasks another supervisor requeued and it claims
    again: both answers for one task may meet in one batch."""
    paused = start_supervisor(dsn, "--lease-grace", "1", "--heartbeat-interval", "0.5",
                              processes=1)
    start_supervisor(dsn, "--heartbeat-interval", "0.5", flows="e2e_flows:noop")  # requeues only
    with Client(dsn) as client:
        run_ids = [client.start_flow("e2e_slow", {"seconds": 0.2}) for _ in range(10)]
        wait_until(lambda: query(dsn, "select count(*) from pgflow.queue where lease_expires_at "
                                      "is not null")[0][0] >= 2, what="tasks claimed")
        paused.signal(signal.SIGSTOP)
        time.sleep(7)  # the leases (timeout 4 s + grace 1 s) expire; the other one requeues
        paused.signal(signal.SIGCONT)
        runs = [client.wait(run_id, timeout=60) for run_id in run_ids]
    assert {r.status for r in runs} == {"completed"}
    assert paused.proc.poll() is None, f"the paused supervisor died:\n{paused.log()}"
    assert query(dsn, "select count(*) from pgflow.tasks where status = 'completed'") == [(10,)]


def test_an_output_over_the_limit_fails_its_task_and_the_others_complete(dsn, start_supervisor):
    start_supervisor(dsn, "--max-output-bytes", "4096")
    with Client(dsn) as client:
        small = [client.start_flow("e2e_sized", {"bytes": 100}) for _ in range(5)]
        huge = client.start_flow("e2e_sized", {"bytes": 10_000})
        assert {client.wait(r, timeout=20).status for r in small} == {"completed"}
        failed = client.wait(huge, timeout=20)
    assert failed.status == "failed"
    assert "10,002 bytes of JSON, over the limit of 4,096" in (failed.error or "")


def test_a_run_locked_by_someone_else_does_not_stop_the_others(dsn, start_supervisor):
    """A row lock held on one started run used to freeze every supervisor:
    each batch waited for lock_timeout, reconnected and tried again."""
    start_supervisor(dsn)
    with Client(dsn) as client, psycopg.connect(dsn) as holder:
        blocked = client.start_flow("e2e_slow", {"seconds": 0.3})
        holder.execute("select 1 from pgflow.runs where run_id = %s for update", (blocked,))
        others = [client.start_flow("e2e_noop", i) for i in range(30)]
        started = time.monotonic()
        assert {client.wait(r, timeout=20).status for r in others} == {"completed"}
        assert time.monotonic() - started < 10
        time.sleep(0.5)
        assert client.get_run(blocked).status == "started", "its answer waits for the lock"
        holder.rollback()
        assert client.wait(blocked, timeout=20).status == "completed"


def test_a_start_during_an_outage_waits_feeding_the_watchdog(tmp_path):
    """It used to exit 1 at once, and under systemd restart every 2 s."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    env = {**os.environ, "PYTHONPATH": str(APP), "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([str(PGFLOW), "supervise", "--database-url",
                             "postgresql://postgres@127.0.0.1:1/nothing", "--flows", "e2e_flows",
                             "--metrics-port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        pings = extended = 0
        deadline = time.monotonic() + 10
        while (pings < 3 or not extended) and time.monotonic() < deadline:
            message = notify.recv(4096)
            pings += b"WATCHDOG=1" in message
            extended += b"EXTEND_TIMEOUT_USEC=" in message
        assert pings >= 3, "no watchdog pings while waiting for the database"
        assert extended, "systemd's start timeout is extended while it waits"
        assert proc.poll() is None, "it is still waiting"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0]
        notify.close()
    assert "waiting for the database" in output and "Connection refused" in output


def test_a_start_timeout_gives_up_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(APP)}
    result = subprocess.run([str(PGFLOW), "supervise", "--database-url",
                             "postgresql://postgres@127.0.0.1:1/nothing", "--flows", "e2e_flows",
                             "--startup-timeout", "1", "--metrics-port", "0"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pgflow supervise: cannot connect to the database") and "gave up" in last


def _rounds(port: int) -> float:
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(r'pgflow_db_roundtrip_seconds_count\{operation="round"\} (\S+)', metrics)
    return float(match[1]) if match else 0.0


def test_prefetch_0_does_not_poll_while_every_executor_is_busy(dsn, start_supervisor):
    from tests.e2e.test_metrics_endpoint import free_port

    port = free_port()
    start_supervisor(dsn, "--prefetch", "0", "--metrics-port", str(port), processes=1)
    with Client(dsn) as client:
        client.start_flow("e2e_slow", {"seconds": 2.5})
        wait_until(lambda: query(dsn, "select count(*) from pgflow.queue where lease_expires_at "
                                      "is not null")[0][0] == 1, what="the long task claimed")
        client.start_flow("e2e_noop", 1)
        before = _rounds(port)
        time.sleep(1.5)
        during = _rounds(port) - before
    assert during <= 3, f"{during} rounds in 1.5 s with the only executor busy"


def test_an_answer_waiting_in_the_socket_is_read_before_a_deadline_kills(dsn, start_supervisor,
                                                                         tmp_path):
    """After SIGSTOP/SIGCONT of the supervisor, a task that answered in time
    used to be killed as timed out because its deadline had passed."""
    supervisor = start_supervisor(dsn, processes=1)
    pid_file = tmp_path / "pid"
    with Client(dsn) as client:
        run_id = client.start_flow("e2e_late", {"pid_file": str(pid_file)})
        wait_for_pid_file(pid_file)
        supervisor.signal(signal.SIGSTOP)
        time.sleep(2)  # the handler answers after 0.5 s; its 1 s deadline passes meanwhile
        supervisor.signal(signal.SIGCONT)
        run = client.wait(run_id, timeout=20)
    assert run.status == "completed" and run.output == {"half_a_second": "on time"}


def test_killing_an_overrunning_executor_kills_what_its_handler_forked(dsn, start_supervisor,
                                                                       tmp_path):
    start_supervisor(dsn)
    pid_file = tmp_path / "grandchild"
    with Client(dsn) as client:
        run = client.wait(client.start_flow("e2e_faults", {"pid_file": str(pid_file)}), timeout=20)
    assert run.status == "failed" and "timed out" in (run.error or "")
    grandchild = wait_for_pid_file(pid_file)
    wait_until(lambda: not pid_alive(grandchild), timeout=5, what="the grandchild gone")


def test_a_handler_that_closes_stdio_gets_its_executor_replaced(dsn, start_supervisor):
    start_supervisor(dsn, processes=1)
    with Client(dsn) as client:
        first = client.wait(client.start_flow("e2e_closes_stdio", None), timeout=20)
        again = client.wait(client.start_flow("e2e_closes_stdio", None), timeout=20)
        later = client.wait(client.start_flow("e2e_noop", "still fine"), timeout=20)
    assert first.status == again.status == later.status == "completed"
    assert first.output != again.output, "a fresh executor ran the second task"


def test_an_executor_reconnects_after_a_database_restart_without_failing_an_attempt(
        private_postgres, start_supervisor):
    dsn, restart = private_postgres
    with Client(dsn) as client:
        client.migrate()
        start_supervisor(dsn, processes=1)
        before = client.wait(client.start_flow("e2e_reads_input", {"n": 1}), timeout=20)
        restart(down_for=0.5)
        after = client.wait(client.start_flow("e2e_reads_input", {"n": 2}), timeout=60)
    assert before.output == {"uses_flow_input": {"n": 1}}
    assert after.output == {"uses_flow_input": {"n": 2}}
    assert query(dsn, "select count(*) from pgflow.tasks where errors <> '[]'") == [(0,)], \
        "the executor's dropped connection did not cost an attempt"




def test_with_autovacuum_off_the_supervisor_vacuums_the_queue(dsn, start_supervisor):
    if query(dsn, "show autovacuum") != [("off",)]:
        import pytest

        pytest.skip("autovacuum is on here: the supervisor leaves the queue to it")
    start_supervisor(dsn, "--queue-vacuum-interval", "0.5")
    with Client(dsn) as client:
        runs = client.start_flows("e2e_noop", list(range(200)))
        assert {client.wait(r, timeout=20).status for r in runs} == {"completed"}
    wait_until(lambda: query(dsn, "select pg_stat_clear_snapshot(), last_vacuum is not null from "
                                  "pg_stat_user_tables where relid = 'pgflow.queue'::regclass")[0][1],
               what="pgflow.queue vacuumed")
