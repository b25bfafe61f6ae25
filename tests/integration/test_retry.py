"""Client.retry_run / pgflow.retry_run: a failed or cancelled run resumes in
place, under the same id, keeping what completed."""

from __future__ import annotations

import uuid

import pytest

from executor import drain
from pgflow import Flow, InvalidInputError, RunNotFoundError, worker_api
from tests.integration.helpers import HandWorker, count, diamond_flow, single_flow


class Switch:
    """Handlers fail while `broken` holds their name; calls are counted."""

    def __init__(self, *broken: str) -> None:
        self.broken = set(broken)
        self.calls: dict[str, int] = {}

    def __call__(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.broken:
            raise RuntimeError(f"{name} is broken")


def diamond_with(switch: Switch, **options) -> Flow:
    flow = Flow("retry_diamond", max_attempts=2, base_delay=0, **options)

    @flow.step()
    def a(input, ctx):
        switch("a")
        return input["n"] + 1

    @flow.step(depends_on=["a"])
    def b(deps, ctx):
        switch("b")
        return deps["a"] * 2

    @flow.step(depends_on=["a"])
    def c(deps, ctx):
        switch("c")
        return deps["a"] * 3

    @flow.step(depends_on=["b", "c"])
    def d(deps, ctx):
        switch("d")
        return deps["b"] + deps["c"]

    return flow


def test_a_failed_run_resumes_in_place_keeping_completed_steps(client, conn):
    switch = Switch("b")
    flow = diamond_with(switch)
    client.register(flow)
    run_id = client.start_flow(flow, {"n": 1})
    drain(client, flow, wait_for_retries=True)
    failed = client.get_run(run_id)
    assert (failed.status, failed.failed_step) == ("failed", "b")
    a_done_at = failed.steps["a"].completed_at

    switch.broken.clear()
    resumed = client.retry_run(run_id)
    assert (resumed.run_id, resumed.status, resumed.retry_count) == (run_id, "started", 1)
    assert resumed.error is None and resumed.failed_at is None and resumed.retried_at
    assert resumed.steps["a"].status == "completed"
    assert resumed.steps["b"].status == "started" and resumed.steps["b"].attempts == 0
    assert resumed.started_at == failed.started_at

    drain(client, flow, wait_for_retries=True)
    done = client.get_run(run_id)
    assert (done.status, done.output) == ("completed", {"d": 10})
    assert switch.calls["a"] == 1, "a completed step is not run again"
    assert done.steps["a"].completed_at == a_done_at
    assert switch.calls["b"] == 3, "two failed attempts, then one that succeeded"
    assert done.steps["b"].attempts == 1, "attempts count from zero again"
    # The failed attempts stay in the history, tagged with the try they belong to.
    assert [(e["attempt"], e.get("retry"), e["type"]) for e in done.steps["b"].errors] == [
        (1, 0, "RuntimeError"), (2, 0, "RuntimeError")]
    assert "is broken" in done.steps["b"].errors[0]["traceback"]


def test_dependents_wait_for_their_dependencies_and_cancelled_siblings_run_again(client, conn):
    flow = diamond_flow("retry_deps", max_attempts=1)
    client.register(flow)
    run_id = client.start_flow(flow, {"n": 1})
    worker = HandWorker(conn, ["retry_deps"])
    assert worker.complete(worker.claim_one("a"), {"n": 2})
    b = worker.claim_one("b")  # c stays queued
    assert worker.fail(b, "b failed")
    run = client.get_run(run_id)
    assert {s: st.status for s, st in run.steps.items()} == {
        "a": "completed", "b": "failed", "c": "cancelled", "d": "cancelled"}

    resumed = client.retry_run(run_id)
    assert {s: st.status for s, st in resumed.steps.items()} == {
        "a": "completed", "b": "started", "c": "started", "d": "created"}
    ready = {t.step_slug: t for t in worker.claim()}
    assert set(ready) == {"b", "c"}, "d waits for b and c"
    assert {t.attempt for t in ready.values()} == {1}
    assert worker.complete(ready["b"], 4)
    assert worker.complete(ready["c"], 6)
    d = worker.claim_one("d")
    assert d.input == {"b": 4, "c": 6}
    assert worker.complete(d, 10)
    assert client.get_run(run_id).status == "completed"


def test_a_map_step_partly_done_reruns_only_its_unfinished_tasks(client, conn):
    flow = Flow("retry_map", max_attempts=1)

    @flow.map()
    def double(item, ctx):
        return item * 2

    @flow.step(depends_on=["double"])
    def total(deps, ctx):
        return sum(deps["double"])

    client.register(flow)
    run_id = client.start_flow(flow, [1, 2, 3, 4])
    worker = HandWorker(conn, ["retry_map"])
    tasks = sorted(worker.claim(), key=lambda t: t.task_index)
    assert worker.complete(tasks[0], 2)
    assert worker.complete(tasks[3], 8)
    assert worker.fail(tasks[1], "element 2 failed")
    # tasks[2] was running when the run failed: its late answer is refused.
    assert not worker.complete(tasks[2], 6)
    statuses = dict(conn.execute("select task_index, status from pgflow.tasks "
                                 "where run_id = %s and step_slug = 'double'", (run_id,)))
    assert statuses == {0: "completed", 1: "failed", 2: "cancelled", 3: "completed"}

    client.retry_run(run_id)
    again = worker.claim()
    assert sorted(t.task_index for t in again) == [1, 2]
    assert {t.input for t in again} == {2, 3}
    for task in again:
        assert worker.complete(task, task.input * 2)
    total_task = worker.claim_one("total")
    assert total_task.input == {"double": [2, 4, 6, 8]}
    assert worker.complete(total_task, 20)
    run = client.get_run(run_id)
    assert (run.status, run.output, run.steps["double"].output) == (
        "completed", {"total": 20}, [2, 4, 6, 8])


def test_a_cancelled_run_resumes_and_its_old_claims_stay_fenced(client, conn):
    client.register(single_flow("retry_single"))
    run_id = client.start_flow("retry_single", {"x": 1})
    worker = HandWorker(conn, ["retry_single"])
    old = worker.claim_one()
    client.cancel_run(run_id)
    resumed = client.retry_run(run_id)
    assert resumed.status == "started"
    assert not worker.complete(old, "late"), "the cancelled claim's answer is refused"
    new = worker.claim_one()
    assert (new.task_id, new.attempt) == (old.task_id, 1)
    assert worker.complete(new, "fresh")
    run = client.get_run(run_id)
    assert (run.status, run.output) == ("completed", {"only": "fresh"})
    assert count(conn, "select count(*) from pgflow.queue") == 0


def test_a_run_retried_twice_tags_each_try(client, conn):
    client.register(single_flow("retry_twice", max_attempts=1))
    run_id = client.start_flow("retry_twice", 1)
    worker = HandWorker(conn, ["retry_twice"])
    for attempt_error in ("first go", "second go"):
        assert worker.fail(worker.claim_one(), attempt_error)
        client.retry_run(run_id)
    assert worker.fail(worker.claim_one(), "third go")
    run = client.get_run(run_id)
    assert (run.status, run.retry_count) == ("failed", 2)
    assert [(e["error"], e.get("retry")) for e in run.steps["only"].errors] == [
        ("first go", 0), ("second go", 1), ("third go", None)]


def test_retry_refuses_unknown_started_and_completed_runs(client, conn):
    flow = single_flow("retry_refusals")
    client.register(flow)
    with pytest.raises(RunNotFoundError, match="does not exist"):
        client.retry_run(uuid.uuid4())
    run_id = client.start_flow(flow, 1)
    with pytest.raises(InvalidInputError, match="still running .started.; only a failed or "
                                                "cancelled run can be retried"):
        client.retry_run(run_id)
    drain(client, flow)
    with pytest.raises(InvalidInputError, match="completed; there is nothing to retry"):
        client.retry_run(run_id)
    assert client.get_run(run_id).retry_count == 0


def test_retry_refuses_runs_of_a_flow_replaced_since(client, conn):
    old = single_flow("retry_replaced", max_attempts=1)
    client.register(old)
    failed = client.start_flow(old, 1)
    worker = HandWorker(conn, ["retry_replaced"])
    assert worker.fail(worker.claim_one(), "boom")
    running = client.start_flow(old, 2)

    new = Flow("retry_replaced")

    @new.step()
    def first(input, ctx):
        return input

    @new.step(depends_on=["first"])
    def second(deps, ctx):
        return deps

    assert client.register(new, replace=True) == "replaced"
    assert client.get_run(running).status == "cancelled"
    for run_id in (failed, running):
        with pytest.raises(InvalidInputError, match="flow 'retry_replaced' was replaced by a "
                                                    "new shape at .* after the run started"):
            client.retry_run(run_id)
    # A replace from before the shape's change time was recorded: the step
    # sets differ, and that is enough.
    conn.execute("update pgflow.flows set shape_changed_at = null")
    with pytest.raises(InvalidInputError, match="was replaced by a new shape after the run"):
        client.retry_run(failed)
    # Runs of the new shape retry as usual.
    fresh = client.start_flow("retry_replaced", 3)
    client.cancel_run(fresh)
    assert client.retry_run(fresh).status == "started"


def test_registering_the_same_shape_or_new_options_does_not_block_retries(client, conn):
    client.register(single_flow("retry_options", max_attempts=1))
    run_id = client.start_flow("retry_options", 1)
    worker = HandWorker(conn, ["retry_options"])
    assert worker.fail(worker.claim_one(), "boom")
    assert client.register(single_flow("retry_options", max_attempts=1)) == "verified"
    assert client.register(single_flow("retry_options", max_attempts=4)) == "updated"
    assert client.retry_run(run_id).status == "started"


def test_a_map_over_a_non_array_fails_again_at_once(client, conn):
    flow = Flow("retry_unmappable")

    @flow.step()
    def produce(input, ctx):
        return input

    @flow.map(array="produce")
    def each(item, ctx):
        return item

    client.register(flow)
    run_id = client.start_flow(flow, {"not": "an array"})
    drain(client, flow)
    first = client.get_run(run_id)
    assert first.status == "failed" and "expects an array" in first.error
    again = client.retry_run(run_id)
    assert (again.status, again.retry_count, again.error) == ("failed", 1, first.error)
    assert client.get_run(run_id).steps["produce"].attempts == 1, "produce is not run again"


def test_retry_from_sql_returns_the_run(conn, client):
    client.register(single_flow("retry_sql"))
    run_id = client.start_flow("retry_sql", 1)
    conn.execute("select pgflow.cancel_run(%s)", (run_id,))
    row = conn.execute("select status, retry_count from pgflow.retry_run(%s)", (run_id,)).fetchone()
    assert row == ("started", 1)
    assert worker_api.claim(conn, uuid.uuid4(), ["retry_sql"], 10)[0].run_id == run_id
