"""Retries with backoff, permanent failure, fencing, cancellation, leases."""

from __future__ import annotations

import uuid

import pytest

from pgflow import Flow, RunNotFoundError, worker_api
from tests.integration.helpers import (
    HandWorker,
    chain_map_flow,
    count,
    diamond_flow,
    single_flow,
)


def seconds_until_visible(conn, task_id: int) -> float:
    row = conn.execute(
        "select extract(epoch from visible_at - now()) from pgflow.tasks where task_id = %s",
        (task_id,),
    ).fetchone()
    return float(row[0])


def make_visible(conn, task_id: int) -> None:
    """Skip a retry's backoff (the queue row is what claims read)."""
    conn.execute("update pgflow.tasks set visible_at = now() where task_id = %s", (task_id,))
    conn.execute("update pgflow.queue set visible_at = now() where task_id = %s", (task_id,))


def test_failed_attempts_retry_with_exponential_backoff_then_fail_the_run(client, conn):
    client.register(single_flow(max_attempts=3, base_delay=2))
    run_id = client.start_flow("single", 1)
    worker = HandWorker(conn, ["single"])

    first = worker.claim_one()
    assert worker.fail(first, "boom 1")
    assert seconds_until_visible(conn, first.task_id) == pytest.approx(2, abs=0.5)
    assert worker.claim() == [], "a retry waits for its backoff"

    make_visible(conn, first.task_id)
    second = worker.claim_one()
    assert second.attempt == 2
    assert worker.fail(second, "boom 2")
    assert seconds_until_visible(conn, first.task_id) == pytest.approx(4, abs=0.5)
    assert client.get_run(run_id).status == "started"

    make_visible(conn, first.task_id)
    third = worker.claim_one()
    assert third.attempt == 3
    assert worker.fail(third, "boom 3")

    run = client.get_run(run_id)
    assert (run.status, run.error, run.failed_step) == ("failed", "boom 3", "only")
    assert run.failed_at is not None
    assert (run.steps["only"].status, run.steps["only"].attempts) == ("failed", 3)
    errors = conn.execute(
        "select errors from pgflow.tasks where task_id = %s", (first.task_id,)).fetchone()[0]
    assert [(e["attempt"], e["error"]) for e in errors] == [
        (1, "boom 1"), (2, "boom 2"), (3, "boom 3")]


def test_backoff_is_capped_at_one_hour(client, conn):
    client.register(single_flow(max_attempts=5, base_delay=3000))
    client.start_flow("single", 1)
    worker = HandWorker(conn, ["single"])
    task = worker.claim_one()
    worker.fail(task, "x")
    assert seconds_until_visible(conn, task.task_id) == pytest.approx(3000, abs=1)
    make_visible(conn, task.task_id)
    worker.fail(worker.claim_one(), "x")
    assert seconds_until_visible(conn, task.task_id) == pytest.approx(3600, abs=1)


def test_step_overrides_win_over_flow_defaults(client, conn):
    flow = Flow("override", max_attempts=5, base_delay=10)

    @flow.step(max_attempts=1)
    def once(input, ctx): ...

    client.register(flow)
    run_id = client.start_flow("override", 1)
    worker = HandWorker(conn, ["override"])
    worker.fail(worker.claim_one(), "only one try")
    assert client.get_run(run_id).status == "failed"


def test_permanent_failure_cancels_the_rest_of_the_run(client, conn):
    client.register(diamond_flow(max_attempts=1))
    run_id = client.start_flow("diamond", {"n": 1})
    worker = HandWorker(conn, ["diamond"])
    worker.complete(worker.claim_one("a"), {"n": 2})
    b, c = sorted(worker.claim(), key=lambda t: t.step_slug)
    assert worker.fail(b, "ValueError: bad b")

    run = client.get_run(run_id)
    assert (run.status, run.error, run.failed_step) == ("failed", "ValueError: bad b", "b")
    assert {s: st.status for s, st in run.steps.items()} == {
        "a": "completed", "b": "failed", "c": "cancelled", "d": "cancelled"}
    assert count(conn, "select count(*) from pgflow.tasks where status in ('queued', 'started')") == 0
    # The other branch's answer arrives later and changes nothing.
    assert not worker.complete(c, 6)
    assert client.get_run(run_id).steps["c"].status == "cancelled"


def test_permanent_failure_cancels_other_queued_tasks(client, conn):
    from tests.integration.helpers import map_flow

    client.register(map_flow(max_attempts=1))
    run_id = client.start_flow("mapper", [1, 2, 3])
    worker = HandWorker(conn, ["mapper"])
    task = worker.claim_one()  # the other two go back to the queue
    worker.fail(task, "nope")
    statuses = conn.execute(
        "select status, count(*) from pgflow.tasks where run_id = %s group by status",
        (run_id,),
    ).fetchall()
    assert dict(statuses) == {"failed": 1, "cancelled": 2}


def test_stale_attempt_is_fenced(client, conn):
    client.register(single_flow(max_attempts=3, base_delay=0))
    run_id = client.start_flow("single", 1)
    worker = HandWorker(conn, ["single"])
    first = worker.claim_one()
    worker.fail(first, "lost")
    second = worker.claim_one()
    assert second.attempt == 2
    assert not worker.complete(first, "late answer from attempt 1")
    assert not worker.fail(first, "late failure from attempt 1")
    assert worker.complete(second, "ok")
    assert not worker.complete(second, "twice")
    run = client.get_run(run_id)
    assert run.output == {"only": "ok"}


def test_dependent_map_given_a_non_array_fails_the_run_without_retries(client, conn):
    client.register(chain_map_flow())
    run_id = client.start_flow("chain_map", None)
    worker = HandWorker(conn, ["chain_map"])
    worker.complete(worker.claim_one("produce"), {"oops": 1})
    run = client.get_run(run_id)
    assert run.status == "failed"
    assert run.failed_step == "each"
    assert "Map step 'each'" in run.error
    assert "from step 'produce'" in run.error
    assert "object" in run.error and '{"oops": 1}' in run.error
    assert count(conn, "select count(*) from pgflow.tasks where step_slug = 'each'") == 0


def test_cancel_run_cancels_queued_and_ignores_running(client, conn):
    client.register(diamond_flow())
    run_id = client.start_flow("diamond", {"n": 1})
    worker = HandWorker(conn, ["diamond"])
    worker.complete(worker.claim_one("a"), {"n": 2})
    running = worker.claim_one("b")  # c stays queued

    run = client.cancel_run(run_id)
    assert run.status == "cancelled" and run.cancelled_at is not None
    assert count(conn, "select count(*) from pgflow.tasks where status = 'queued'") == 0
    assert not worker.complete(running, 4)
    assert worker.claim() == []
    assert {s.status for s in client.get_run(run_id).steps.values()} == {"completed", "cancelled"}
    assert client.cancel_run(run_id).status == "cancelled", "cancelling twice is a no-op"


def test_cancelling_a_finished_run_changes_nothing(client, conn):
    client.register(single_flow())
    run_id = client.start_flow("single", 1)
    worker = HandWorker(conn, ["single"])
    worker.complete(worker.claim_one(), 1)
    assert client.cancel_run(run_id).status == "completed"


def test_cancel_unknown_run(client):
    with pytest.raises(RunNotFoundError):
        client.cancel_run(uuid.uuid4())


def test_start_delay_hides_the_first_task_until_due(client, conn):
    flow = Flow("delayed")

    @flow.step(start_delay=60)
    def later(input, ctx): ...

    client.register(flow)
    client.start_flow("delayed", 1)
    worker = HandWorker(conn, ["delayed"])
    assert worker.claim() == []
    assert worker_api.seconds_until_next_task(conn, ["delayed"]) == pytest.approx(60, abs=2)
    assert worker_api.seconds_until_next_task(conn, ["other"]) is None


def test_release_gives_a_task_back_without_charging_an_attempt(client, conn):
    client.register(single_flow())
    client.start_flow("single", 1)
    worker = HandWorker(conn, ["single"])
    task = worker.claim_one()
    assert worker_api.release(conn, [(task.task_id, task.token)]) == {task.task_id}
    again = worker.claim_one()
    assert (again.task_id, again.attempt) == (task.task_id, 1)


def test_expired_lease_is_requeued_counting_the_lost_attempt(client, conn):
    client.register(single_flow(max_attempts=3, base_delay=0))
    run_id = client.start_flow("single", 1)
    vanished = HandWorker(conn, ["single"])
    lost = vanished.claim_one()
    assert worker_api.requeue_expired(conn) == 0, "the lease has not expired yet"
    conn.execute("update pgflow.queue set lease_expires_at = now() - interval '1 second'")
    assert worker_api.requeue_expired(conn) == 1

    survivor = HandWorker(conn, ["single"])
    retry = survivor.claim_one()
    assert retry.attempt == 2
    assert not vanished.complete(lost, "late"), "the lost attempt's answer is ignored"
    assert survivor.complete(retry, "done")
    assert client.get_run(run_id).output == {"only": "done"}
    errors = conn.execute("select errors from pgflow.tasks").fetchone()[0]
    assert "Lease expired" in errors[0]["error"] and "test-host" in errors[0]["error"]


def test_lease_runs_until_timeout_plus_grace_and_heartbeat_extends_it(client, conn):
    client.register(single_flow(timeout=10))
    client.start_flow("single", 1)
    worker = HandWorker(conn, ["single"])
    task = worker.claim(lease_grace=5)[0]
    lease = "select extract(epoch from lease_expires_at - now()) from pgflow.queue"
    assert float(conn.execute(lease).fetchone()[0]) == pytest.approx(15, abs=1)
    conn.execute("update pgflow.queue set lease_expires_at = now() + interval '1 second'")
    lost = worker_api.heartbeat(conn, worker.worker_id, [(task.task_id, task.token)], lease_grace=30)
    assert lost == set()
    assert float(conn.execute(lease).fetchone()[0]) == pytest.approx(30, abs=1)
    stale = worker_api.heartbeat(conn, uuid.uuid4(), [(task.task_id, task.token + 1)])
    assert stale == {task.task_id}, "a heartbeat with another claim's token holds nothing"


def test_answers_report_retries_and_finished_runs(client, conn):
    client.register(single_flow(max_attempts=2, base_delay=0))
    run_id = client.start_flow("single", 1)
    worker = HandWorker(conn, ["single"])
    first = worker.claim_one()
    report = worker_api.fail(conn, [(first.task_id, first.token, "x")]).accepted
    assert report[first.task_id].retry is True
    assert report[first.task_id].run_status is None
    second = worker.claim_one()
    report = worker_api.fail(conn, [(second.task_id, second.token, "y")]).accepted
    assert (report[second.task_id].retry, report[second.task_id].run_status) == (False, "failed")
    assert report[second.task_id].run_seconds >= 0
    assert client.get_run(run_id).status == "failed"


def test_completion_reports_the_run_it_finished_once(client, conn):
    from tests.integration.helpers import map_flow

    client.register(map_flow())
    client.start_flow("mapper", [1, 2])
    worker = HandWorker(conn, ["mapper"])
    tasks = worker.claim()
    report = worker_api.complete(conn, [(t.task_id, t.token, 1) for t in tasks]).accepted
    assert [a.run_status for a in report.values()] == [None, None], "the run is not done yet"
    (total,) = worker.claim()
    report = worker_api.complete(conn, [(total.task_id, total.token, 2)]).accepted
    assert report[total.task_id].run_status == "completed"
