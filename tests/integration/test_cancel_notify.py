"""Cancelling tasks a claim holds tells supervisors to kill their executors:
NOTIFY pgflow_cancel with the run ids (cancel, run failure, replace)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pgflow import Flow, db
from tests.integration.helpers import HandWorker, diamond_flow, single_flow


@pytest.fixture
def listener(dsn: str) -> Iterator[psycopg.Connection]:
    conn = db.connect(dsn, "cancel listener")
    conn.execute("listen pgflow_cancel")
    try:
        yield conn
    finally:
        conn.close()


def cancelled_runs(listener: psycopg.Connection) -> list[set[str]]:
    """The run ids of each pgflow_cancel notification received so far."""
    listener.execute("select 1")  # deliver what is pending
    return [set(n.payload.split(",")) for n in listener.notifies(timeout=0.2)]


def test_cancelling_a_run_names_it_only_when_a_task_was_held(client, conn, listener):
    client.register(diamond_flow())
    held = client.start_flow("diamond", {"n": 1})
    HandWorker(conn, ["diamond"]).claim_one()
    queued_only = client.start_flow("diamond", {"n": 2})
    client.cancel_run(queued_only)
    client.cancel_run(held)
    client.cancel_run(held)  # already cancelled: nothing more
    assert cancelled_runs(listener) == [{str(held)}]


def test_a_failing_task_names_its_run_so_running_siblings_stop(client, conn, listener):
    flow = Flow("siblings", max_attempts=1)

    @flow.map()
    def each(item, ctx):
        return item

    client.register(flow)
    run_id = client.start_flow(flow, [1, 2, 3])
    worker = HandWorker(conn, ["siblings"])
    first, *others = worker.claim()
    assert worker.fail(first, "boom")
    assert cancelled_runs(listener) == [{str(run_id)}]
    assert not any(worker.complete(t, 1) for t in others)


def test_replacing_a_flow_names_its_runs_in_chunks_under_the_payload_limit(client, conn, listener):
    client.register(single_flow("many"))
    run_ids = client.start_flows("many", list(range(250)))
    HandWorker(conn, ["many"]).claim(limit=250)
    replacement = Flow("many")

    @replacement.step()
    def other(input, ctx):
        return input

    client.register(replacement, replace=True)
    notified = cancelled_runs(listener)
    assert [len(ids) for ids in notified] == [100, 100, 50]
    assert set().union(*notified) == {str(r) for r in run_ids}


def test_a_failed_run_with_no_task_held_sends_nothing(client, conn, listener):
    client.register(single_flow("alone", max_attempts=1))
    client.start_flow("alone", 1)
    worker = HandWorker(conn, ["alone"])
    assert worker.fail(worker.claim_one(), "boom")
    assert cancelled_runs(listener) == []
