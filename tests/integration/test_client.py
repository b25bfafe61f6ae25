"""Client behaviour: waiting on runs, surviving dropped connections."""

from __future__ import annotations

import threading
import time

import pytest

from pgflow import Client, db
from tests.integration.helpers import HandWorker, single_flow


def test_wait_returns_when_another_process_finishes_the_run(client, dsn):
    client.register(single_flow())
    run_id = client.start_flow("single", "x")

    def finish_later() -> None:
        time.sleep(0.3)
        with db.connect(dsn, "finisher") as conn:
            worker = HandWorker(conn, ["single"])
            worker.complete(worker.claim_one(), "done")

    thread = threading.Thread(target=finish_later)
    started = time.monotonic()
    thread.start()
    run = client.wait(run_id, timeout=10)
    elapsed = time.monotonic() - started
    thread.join()
    assert (run.status, run.output) == ("completed", {"only": "done"})
    # Woken by NOTIFY, well before the 2 s re-check.
    assert 0.25 < elapsed < 1.5


def test_wait_raises_timeout_error_for_an_unfinished_run(client):
    client.register(single_flow())
    run_id = client.start_flow("single", "x")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"Run {run_id} of flow 'single' is still started"):
        client.wait(run_id, timeout=0.3)
    assert time.monotonic() - started < 1.5
    # The client is still usable afterwards.
    assert client.get_run(run_id).status == "started"


def test_wait_returns_at_once_for_a_finished_run(client):
    client.register(single_flow())
    run_id = client.start_flow("single", "x")
    client.cancel_run(run_id)
    assert client.wait(run_id, timeout=0.1).status == "cancelled"


def test_client_reconnects_after_its_connection_is_killed(client, conn):
    client.register(single_flow())
    pid = client.connection().info.backend_pid
    conn.execute("select pg_terminate_backend(%s)", (pid,))
    time.sleep(0.1)
    run_id = client.start_flow("single", 1)  # retried once on a fresh connection
    assert client.connection().info.backend_pid != pid
    assert client.get_run(run_id).status == "started"


def test_client_sets_application_name(dsn, conn):
    with Client(dsn, application_name="my app") as c:
        pid = c.connection().info.backend_pid
        name = conn.execute(
            "select application_name from pg_stat_activity where pid = %s", (pid,)).fetchone()[0]
    assert name == "my app"


def test_server_warnings_name_autovacuum_when_it_is_off(conn):
    from pgflow import worker_api

    autovacuum = conn.execute("show autovacuum").fetchone()[0]
    warnings = worker_api.server_warnings(conn)
    assert any("autovacuum is off" in w for w in warnings) == (autovacuum == "off")


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf")])
def test_wait_refuses_a_negative_or_infinite_timeout(client, timeout):
    client.register(single_flow())
    run_id = client.start_flow("single", "x")
    with pytest.raises(ValueError, match=r"wait\(\): timeout must be a finite number of seconds >= 0"):
        client.wait(run_id, timeout=timeout)
