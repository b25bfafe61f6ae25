"""Starting runs and driving their tasks by hand through the SQL functions."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from pgflow import FlowNotFoundError, InvalidInputError, RunNotFoundError, db
from tests.integration.helpers import (
    HandWorker,
    chain_map_flow,
    count,
    diamond_flow,
    map_flow,
    single_flow,
)


def test_start_creates_run_states_and_ready_tasks(client, conn):
    client.register(diamond_flow())
    run_id = client.start_flow("diamond", {"n": 1})
    run = client.get_run(run_id)
    assert (run.status, run.input, run.output) == ("started", {"n": 1}, None)
    assert {s: st.status for s, st in run.steps.items()} == {
        "a": "started", "b": "created", "c": "created", "d": "created"}
    tasks = conn.execute(
        "select step_slug, status, attempt from pgflow.tasks where run_id = %s", (run_id,)
    ).fetchall()
    assert tasks == [("a", "queued", 0)]


def test_any_language_can_start_a_run_with_one_sql_call(client, conn):
    client.register(diamond_flow())
    row = conn.execute(
        "select run_id, status from pgflow.start_flow('diamond', '{\"n\": 1}'::jsonb)"
    ).fetchone()
    assert row[1] == "started"
    assert client.get_run(row[0]).input == {"n": 1}


def test_unknown_flow_is_a_clear_error_and_writes_nothing(client, conn):
    with pytest.raises(FlowNotFoundError, match="Flow 'nope' is not registered"):
        client.start_flow("nope", {})
    assert count(conn, "select count(*) from pgflow.runs") == 0


def test_root_map_given_an_object_is_refused_and_writes_nothing(client, conn):
    client.register(map_flow())
    with pytest.raises(InvalidInputError, match=r"root map step 'double' needs a JSON array"):
        client.start_flow("mapper", {"not": "an array"})
    assert count(conn, "select count(*) from pgflow.runs") == 0
    assert count(conn, "select count(*) from pgflow.tasks") == 0


def test_input_that_is_not_json_is_refused(client, conn):
    client.register(single_flow())
    with pytest.raises(InvalidInputError, match="Flow 'single': the run input is not JSON"):
        client.start_flow("single", {"when": {1, 2}})
    assert count(conn, "select count(*) from pgflow.runs") == 0


def test_run_id_makes_start_idempotent(client, conn):
    client.register(single_flow())
    run_id = uuid.uuid4()
    assert client.start_flow("single", 1, run_id=run_id) == run_id
    assert client.start_flow("single", 2, run_id=str(run_id)) == run_id
    assert count(conn, "select count(*) from pgflow.runs") == 1
    assert count(conn, "select count(*) from pgflow.tasks") == 1
    assert client.get_run(run_id).input == 1


def test_a_run_id_of_another_flow_is_refused(client):
    client.register(single_flow())
    client.register(single_flow("other"))
    run_id = client.start_flow("single", 1)
    with pytest.raises(InvalidInputError, match="already exists for flow 'single'"):
        client.start_flow("other", 1, run_id=run_id)


def test_bad_run_id_and_unknown_run(client):
    with pytest.raises(InvalidInputError, match="not a UUID"):
        client.get_run("not-a-uuid")
    with pytest.raises(RunNotFoundError):
        client.get_run(uuid.uuid4())


def test_diamond_runs_to_completion_with_leaf_output(client, conn):
    client.register(diamond_flow())
    run_id = client.start_flow("diamond", {"n": 1})
    worker = HandWorker(conn, ["diamond"])

    a = worker.claim_one("a")
    assert (a.input, a.input_is_flow_input, a.attempt) == ({"n": 1}, True, 1)
    assert worker.complete(a, {"n": 2})

    b, c = sorted(worker.claim(), key=lambda t: t.step_slug)
    assert (b.step_slug, c.step_slug) == ("b", "c")
    assert b.input == {"a": {"n": 2}} and not b.input_is_flow_input
    assert worker.complete(b, 4)
    assert worker.claim() == [], "d must wait for c"
    assert worker.complete(c, 6)

    (d,) = worker.claim()
    assert d.input == {"b": 4, "c": 6}
    assert worker.complete(d, 10)

    run = client.get_run(run_id)
    assert run.status == "completed"
    assert run.output == {"d": 10}
    assert run.completed_at is not None
    assert all(s.status == "completed" and s.attempts == 1 for s in run.steps.values())


def test_map_outputs_are_aggregated_in_task_order(client, conn):
    client.register(map_flow())
    run_id = client.start_flow("mapper", [5, 6, 7, 8])
    worker = HandWorker(conn, ["mapper"])
    tasks = worker.claim()
    assert [(t.task_index, t.input) for t in tasks] == [(0, 5), (1, 6), (2, 7), (3, 8)]
    for task in reversed(tasks):  # answers arrive out of order
        assert worker.complete(task, task.input * 10)
    (total,) = worker.claim()
    assert total.input == {"double": [50, 60, 70, 80]}
    worker.complete(total, 260)
    run = client.get_run(run_id)
    assert run.steps["double"].output == [50, 60, 70, 80]
    assert run.steps["double"].task_count == 4
    assert run.output == {"total": 260}


def test_map_over_empty_array_completes_at_once(client, conn):
    client.register(map_flow())
    run_id = client.start_flow("mapper", [])
    run = client.get_run(run_id)
    assert run.steps["double"].status == "completed"
    assert run.steps["double"].output == []
    (total,) = HandWorker(conn, ["mapper"]).claim()
    assert total.input == {"double": []}


def test_run_of_only_an_empty_map_completes_inside_start(client):
    from pgflow import Flow

    flow = Flow("just_map")

    @flow.map()
    def each(item, ctx): ...

    client.register(flow)
    run = client.get_run(client.start_flow("just_map", []))
    assert (run.status, run.output) == ("completed", {"each": []})


def test_dependent_map_fans_out_over_its_dependency_output(client, conn):
    client.register(chain_map_flow())
    run_id = client.start_flow("chain_map", None)
    worker = HandWorker(conn, ["chain_map"])
    worker.complete(worker.claim_one("produce"), ["x", "y"])
    tasks = worker.claim()
    assert [(t.step_slug, t.task_index, t.input) for t in tasks] == [
        ("each", 0, "x"), ("each", 1, "y")]
    for t in tasks:
        worker.complete(t, t.input.upper())
    assert client.get_run(run_id).output == {"each": ["X", "Y"]}


@pytest.mark.parametrize("falsy", [0, False, "", [], {}, None])
def test_falsy_outputs_are_outputs(client, conn, falsy):
    client.register(diamond_flow())
    run_id = client.start_flow("diamond", {"n": 0})
    worker = HandWorker(conn, ["diamond"])
    worker.complete(worker.claim_one("a"), falsy)
    b = worker.claim_one("b")
    assert b.input == {"a": falsy}
    stored = conn.execute(
        "select output is not null, jsonb_typeof(output) from pgflow.step_states "
        "where run_id = %s and step_slug = 'a'", (run_id,)
    ).fetchone()
    assert stored == (True, "null" if falsy is None else stored[1])
    assert client.get_run(run_id).steps["a"].output == falsy


def test_two_workers_never_claim_the_same_task(client, dsn):
    client.register(single_flow())
    for i in range(50):
        client.start_flow("single", i)
    with db.connect(dsn, "a") as conn_a, db.connect(dsn, "b") as conn_b:
        worker_a, worker_b = HandWorker(conn_a, ["single"]), HandWorker(conn_b, ["single"])
        with conn_a.transaction():
            # Hold the first claim's row locks open while the second claims.
            first = worker_a.claim(limit=20)
            second = worker_b.claim(limit=100)
        ids_a = {t.task_id for t in first}
        ids_b = {t.task_id for t in second}
        assert len(ids_a) == 20 and len(ids_b) == 30
        assert not ids_a & ids_b


def test_concurrent_completions_of_one_map_step_finish_it_once(client, dsn, conn):
    client.register(map_flow())
    run_id = client.start_flow("mapper", list(range(40)))
    tasks = HandWorker(conn, ["mapper"]).claim()
    halves = [tasks[0::2], tasks[1::2]]
    errors: list[Exception] = []

    def complete(batch) -> None:
        from pgflow import worker_api

        try:
            with db.connect(dsn, "t") as c:
                for t in batch:
                    # Deferred while the other connection holds the run: send again.
                    while t.task_id in worker_api.complete(
                            c, [(t.task_id, t.token, t.input)]).deferred:
                        pass
        except Exception as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=complete, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    run = client.get_run(run_id)
    assert run.steps["double"].output == list(range(40))
    assert count(conn, "select count(*) from pgflow.tasks where step_slug = 'total'") == 1


def test_start_sends_one_notification_per_transaction(client, dsn):
    client.register(map_flow())
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgflow_tasks")
        client.start_flow("mapper", list(range(100)))
        received = list(listener.notifies(timeout=0.5))
    assert [(n.channel, n.payload) for n in received] == [("pgflow_tasks", "mapper")]


def test_run_completion_is_notified_with_the_run_id(client, dsn, conn):
    client.register(single_flow())
    run_id = client.start_flow("single", 1)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgflow_runs")
        worker = HandWorker(conn, ["single"])
        worker.complete(worker.claim_one(), 1)
        received = list(listener.notifies(timeout=0.5))
    assert [(n.channel, n.payload) for n in received] == [("pgflow_runs", str(run_id))]


def test_many_run_completions_are_chunked_under_the_payload_limit(client, dsn, conn):
    client.register(single_flow())
    run_ids = {str(client.start_flow("single", i)) for i in range(250)}
    worker = HandWorker(conn, ["single"])
    tasks = worker.claim(limit=250)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgflow_runs")
        from pgflow import worker_api

        worker_api.complete(conn, [(t.task_id, t.token, 1) for t in tasks])
        received = list(listener.notifies(timeout=0.5))
    assert len(received) == 3
    assert all(len(n.payload) < 8000 for n in received)
    assert {i for n in received for i in n.payload.split(",")} == run_ids
