"""Concurrency limits: Flow(max_concurrency=N) and per-step max_concurrency,
enforced by the claim in SQL, across every claimer of the database."""

from __future__ import annotations

import select
from typing import Any

import psycopg

from executor import drain
from pgflow import Flow, db, worker_api
from tests.integration.helpers import HandWorker, count


def limited_flow(slug: str = "limited", flow_limit: int | None = None,
                 step_limit: int | None = None, **options: Any) -> Flow:
    """Two root steps: `capped` (with `step_limit`) and `free`."""
    flow = Flow(slug, max_concurrency=flow_limit, **options)

    @flow.step(max_concurrency=step_limit)
    def capped(input):
        return input

    @flow.step()
    def free(input):
        return input

    return flow


def held(conn: psycopg.Connection, step_slug: str | None = None) -> int:
    return count(conn, "select count(*) from pgflow.task_states where status = 'started' "
                       "and (%s::text is null or step_slug = %s::text)", step_slug, step_slug)


def test_a_flow_limit_caps_the_tasks_held_at_once_across_claimers(client, conn, dsn):
    client.register(limited_flow(flow_limit=3))
    client.start_flows("limited", list(range(10)))
    first = HandWorker(conn, ["limited"])
    with db.connect(dsn, "second claimer") as other_conn:
        second = HandWorker(other_conn, ["limited"])
        claimed = first.claim(limit=100)
        assert len(claimed) == 3
        assert second.claim(limit=100) == []
        assert first.complete(claimed[0], "done")
        again = second.claim(limit=100)
        assert len(again) == 1
    assert held(conn) == 3


def test_a_step_limit_caps_only_that_step(client, conn):
    client.register(limited_flow(step_limit=2))
    client.start_flows("limited", list(range(5)))
    claimed = HandWorker(conn, ["limited"]).claim(limit=100)
    assert sorted(t.step_slug for t in claimed) == ["capped"] * 2 + ["free"] * 5


def test_step_and_flow_limits_together(client, conn):
    client.register(limited_flow(flow_limit=4, step_limit=1))
    client.start_flows("limited", list(range(5)))
    claimed = HandWorker(conn, ["limited"]).claim(limit=100)
    assert len(claimed) == 4
    assert sum(t.step_slug == "capped" for t in claimed) == 1


def test_limit_one_is_strictly_serial(client, conn):
    flow = Flow("serial", max_concurrency=1)
    order: list[int] = []

    @flow.step()
    def only(input):
        order.append(input)
        return input

    client.register(flow)
    client.start_flows(flow, list(range(5)))
    worker = HandWorker(conn, ["serial"])
    for expected in range(5):
        tasks = worker.claim(limit=10)
        assert [t.input for t in tasks] == [expected]
        assert worker.claim(limit=10) == []
        assert worker.complete(tasks[0], expected)
    assert drain(client, flow) == 0


def test_claims_of_a_limited_flow_serialize_without_waiting(client, conn, dsn):
    """A claim inside an open transaction holds the flow's claim lock: a
    concurrent claim takes nothing (and does not wait), then sees its leases."""
    client.register(limited_flow(flow_limit=2))
    client.start_flows("limited", list(range(10)))
    first = HandWorker(conn, ["limited"])
    with db.connect(dsn, "second claimer") as other_conn:
        second = HandWorker(other_conn, ["limited"])
        with conn.transaction():
            assert len(first.claim(limit=100)) == 2
            other_conn.execute("set lock_timeout = '100ms'")
            assert second.claim(limit=100) == []
        assert second.claim(limit=100) == []
    assert held(conn) == 2


def test_room_comes_back_when_held_tasks_end_any_way(client, conn):
    client.register(limited_flow(flow_limit=1, max_attempts=3, base_delay=0))
    client.start_flows("limited", list(range(3)))
    worker = HandWorker(conn, ["limited"])

    task = worker.claim(limit=10)[0]
    assert worker.fail(task, "retry me")  # retried: no longer held
    task = worker.claim(limit=10)[0]
    worker_api.release(conn, [(task.task_id, task.token)])
    task = worker.claim(limit=10)[0]
    conn.execute("update pgflow.queue set lease_expires_at = now() - interval '1s' "
                 "where task_id = %s", (task.task_id,))
    assert worker_api.requeue_expired(conn) == 1
    task = worker.claim(limit=10)[0]
    client.cancel_run(task.run_id)
    assert len(worker.claim(limit=10)) == 1


def test_tasks_waiting_for_room_are_not_due_and_their_room_is_notified(client, conn, dsn):
    client.register(limited_flow(step_limit=1))
    client.start_flows("limited", [1, 2])
    worker = HandWorker(conn, ["limited"])
    claimed = worker.claim(limit=10)
    assert sorted(t.step_slug for t in claimed) == ["capped", "free", "free"]
    # The second "capped" task is visible but waits for room: nothing is due.
    assert worker_api.seconds_until_next_task(conn, ["limited"]) is None

    with db.connect(dsn, "listener") as listener:
        listener.execute("listen pgflow_tasks")
        capped = next(t for t in claimed if t.step_slug == "capped")
        assert worker.complete(capped, 1)
        assert select.select([listener.fileno()], [], [], 2.0)[0]
        assert [n.payload for n in listener.notifies(timeout=0.5, stop_after=1)] == ["limited"]
    seconds = worker_api.seconds_until_next_task(conn, ["limited"])
    assert seconds is not None and seconds <= 0


def test_a_changed_limit_applies_to_tasks_already_queued(client, conn):
    client.register(limited_flow())
    client.start_flows("limited", list(range(4)))
    assert client.register(limited_flow(step_limit=1)) == "updated"
    claimed = HandWorker(conn, ["limited"]).claim(limit=100)
    assert sorted(t.step_slug for t in claimed) == ["capped"] + ["free"] * 4
    assert client.register(limited_flow()) == "updated"
    assert len(HandWorker(conn, ["limited"]).claim(limit=100)) == 3


def test_unlimited_flows_are_claimed_as_before(client, conn):
    client.register(limited_flow("plain"))
    client.start_flows("plain", list(range(20)))
    assert len(HandWorker(conn, ["plain"]).claim(limit=100)) == 40
    assert count(conn, "select count(*) from pgflow.queue where limited") == 0


def test_a_retried_run_of_a_limited_flow_stays_within_the_limit(client, conn):
    client.register(limited_flow("retried", flow_limit=1, max_attempts=1))
    first = client.start_flow("retried", 1)
    worker = HandWorker(conn, ["retried"])
    for task in worker.claim(limit=10):
        assert worker.fail(task, "broke")
    assert client.get_run(first).status == "failed"
    client.retry_run(first)
    client.start_flow("retried", 2)
    assert len(worker.claim(limit=10)) == 1
    assert worker.claim(limit=10) == []
