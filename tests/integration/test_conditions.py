"""Conditional steps, evaluated by the engine in SQL: if_ / if_not, when_unmet
(skip, skip_cascade, fail) and when_exhausted (fail, skip, skip_cascade)."""

from __future__ import annotations

from typing import Any

import pytest

from executor import drain
from pgflow import Flow, ShapeConflictError
from tests.integration.helpers import HandWorker, count


def statuses(client: Any, run_id: Any) -> dict[str, tuple[str, str | None]]:
    run = client.get_run(run_id)
    return {slug: (s.status, s.skip_reason) for slug, s in run.steps.items()}


def routed_flow(slug: str = "routed", **kind_options: Any) -> Flow:
    """kind -> a (if kind is "a") | b (if kind is not "a"); both leaves."""
    flow = Flow(slug, max_attempts=1)

    @flow.step()
    def kind(input):
        return {"kind": input["kind"]}

    @flow.step(depends_on=["kind"], if_={"kind": {"kind": "a"}}, **kind_options)
    def a(deps):
        return "ran a"

    @flow.step(depends_on=["kind"], if_not={"kind": {"kind": "a"}})
    def b(deps):
        return "ran b"

    return flow


def test_dependent_steps_run_only_when_their_input_contains_the_pattern(client, conn):
    flow = routed_flow()
    client.register(flow)
    run_a = client.start_flow(flow, {"kind": "a"})
    run_b = client.start_flow(flow, {"kind": "b"})
    drain(client, flow)

    first, second = client.get_run(run_a), client.get_run(run_b)
    assert (first.status, first.output) == ("completed", {"a": "ran a"})
    assert (second.status, second.output) == ("completed", {"b": "ran b"})
    assert statuses(client, run_a)["b"] == ("skipped", "condition_unmet")
    skipped = second.steps["a"]
    assert (skipped.status, skipped.skip_reason, skipped.task_count) == (
        "skipped", "condition_unmet", None)
    assert skipped.skipped_at is not None and skipped.output is None
    # A skipped step never had a task: the condition is decided before one is made.
    assert count(conn, "select count(*) from pgflow.tasks where run_id = %s and step_slug = 'a'",
                 run_b) == 0


def test_root_conditions_are_decided_when_the_run_starts(client, conn):
    flow = Flow("rooted")

    @flow.step(if_={"enabled": True})
    def maybe(input):
        return "ran"

    @flow.step()
    def always(input):
        return "always"

    client.register(flow)
    run_id = client.start_flow(flow, {"enabled": False})
    assert statuses(client, run_id)["maybe"] == ("skipped", "condition_unmet")
    assert count(conn, "select count(*) from pgflow.tasks where run_id = %s", run_id) == 1
    drain(client, flow)
    assert client.get_run(run_id).output == {"always": "always"}


def test_dependents_of_a_skipped_step_see_it_absent(client):
    flow = Flow("absent")

    @flow.step(if_={"go": True})
    def optional(input):
        return "optional"

    @flow.step()
    def needed(input):
        return "needed"

    @flow.step(depends_on=["optional", "needed"])
    def join(deps):
        return sorted(deps)

    client.register(flow)
    run_id = client.start_flow(flow, {"go": False})
    drain(client, flow)
    run = client.get_run(run_id)
    assert (run.status, run.output) == ("completed", {"join": ["needed"]})


def test_skip_cascade_skips_everything_downstream_and_the_rest_runs(client):
    flow = Flow("cascade")

    @flow.step(if_={"go": True}, when_unmet="skip_cascade")
    def gate(input):
        return 1

    @flow.step(depends_on=["gate"])
    def after(deps):
        return 2

    @flow.step(depends_on=["after"])
    def last(deps):
        return 3

    @flow.step()
    def other(input):
        return "other"

    client.register(flow)
    run_id = client.start_flow(flow, {"go": False})
    drain(client, flow)
    assert statuses(client, run_id) == {
        "gate": ("skipped", "condition_unmet"), "other": ("completed", None),
        "after": ("skipped", "dependency_skipped"), "last": ("skipped", "dependency_skipped")}
    assert client.get_run(run_id).output == {"other": "other"}


def test_a_run_whose_every_leaf_was_skipped_completes(client):
    flow = Flow("all_skipped")

    @flow.step()
    def check(input):
        return {"ok": False}

    @flow.step(depends_on=["check"], if_={"check": {"ok": True}})
    def act(deps):
        return "acted"

    client.register(flow)
    run_id = client.start_flow(flow, {})
    drain(client, flow)
    run = client.get_run(run_id)
    assert (run.status, run.output) == ("completed", {})
    assert run.steps["check"].output == {"ok": False}


def test_when_unmet_fail_fails_the_run_naming_flow_step_and_pattern(client, conn):
    flow = routed_flow("strict", when_unmet="fail")
    client.register(flow)
    run_id = client.start_flow(flow, {"kind": "b"})
    drain(client, flow)
    run = client.get_run(run_id)
    assert (run.status, run.failed_step) == ("failed", "a")
    assert run.error == ("Flow 'strict', step 'a': condition not met (when_unmet = fail): its "
                         'input {"kind": {"kind": "b"}} does not contain if_ {"kind": {"kind": "a"}}')
    assert statuses(client, run_id)["b"] == ("cancelled", None)
    assert count(conn, "select count(*) from pgflow.queue") == 0


def test_a_map_over_a_skipped_step_is_skipped(client):
    flow = Flow("map_skip")

    @flow.step(if_={"items": True})
    def items(input):
        return [1, 2]

    @flow.map(array="items")
    def each(item):
        return item

    @flow.step(depends_on=["each"])
    def total(deps):
        return sum(deps.get("each", []))

    client.register(flow)
    run_id = client.start_flow(flow, {"items": False})
    drain(client, flow)
    assert statuses(client, run_id) == {"items": ("skipped", "condition_unmet"),
                                        "each": ("skipped", "dependency_skipped"),
                                        "total": ("completed", None)}
    assert client.get_run(run_id).output == {"total": 0}


def exhausting_flow(when_exhausted: str) -> Flow:
    flow = Flow(f"exhaust_{when_exhausted}", max_attempts=2, base_delay=0)

    @flow.step(when_exhausted=when_exhausted)
    def flaky(input):
        raise RuntimeError("flaky broke")

    @flow.step(depends_on=["flaky"])
    def after(deps):
        return sorted(deps)

    @flow.step()
    def other(input):
        return "other"

    return flow


def test_when_exhausted_skip_skips_the_step_and_the_run_goes_on(client):
    flow = exhausting_flow("skip")
    client.register(flow)
    run_id = client.start_flow(flow, {})
    drain(client, flow, wait_for_retries=True)
    run = client.get_run(run_id)
    assert (run.status, run.output) == ("completed", {"after": [], "other": "other"})
    flaky = run.steps["flaky"]
    assert (flaky.status, flaky.skip_reason, flaky.attempts) == ("skipped", "handler_failed", 2)
    assert flaky.error == "RuntimeError: flaky broke"


def test_when_exhausted_skip_cascade_skips_downstream(client):
    flow = exhausting_flow("skip_cascade")
    client.register(flow)
    run_id = client.start_flow(flow, {})
    drain(client, flow, wait_for_retries=True)
    assert statuses(client, run_id) == {"flaky": ("skipped", "handler_failed"),
                                        "after": ("skipped", "dependency_skipped"),
                                        "other": ("completed", None)}
    assert client.get_run(run_id).output == {"other": "other"}


def test_when_exhausted_fail_is_the_default(client):
    flow = exhausting_flow("fail")
    client.register(flow)
    run_id = client.start_flow(flow, {})
    drain(client, flow, wait_for_retries=True)
    run = client.get_run(run_id)
    assert (run.status, run.failed_step, run.error) == ("failed", "flaky", "RuntimeError: flaky broke")


def test_an_exhausted_map_element_skips_the_whole_map_and_cancels_its_other_tasks(client, conn):
    flow = Flow("map_exhaust", max_attempts=1)

    @flow.map(when_exhausted="skip")
    def each(item):
        return item

    @flow.step(depends_on=["each"])
    def after(deps):
        return deps

    client.register(flow)
    run_id = client.start_flow(flow, [1, 2, 3])
    worker = HandWorker(conn, ["map_exhaust"])
    first, second, third = worker.claim(limit=3)
    assert worker.complete(first, 1)
    assert worker.fail(second, "element 2 is bad")
    assert not worker.complete(third, 3), "its step was skipped: the answer is stale"
    drain(client, flow)
    run = client.get_run(run_id)
    assert (run.status, run.output) == ("completed", {"after": {}})
    assert (run.steps["each"].status, run.steps["each"].error) == ("skipped", "element 2 is bad")
    assert conn.execute("select task_index, status from pgflow.tasks where step_slug = 'each' "
                        "order by task_index").fetchall() == [
        (0, "completed"), (1, "failed"), (2, "cancelled")]


def test_an_expired_lease_on_the_last_attempt_follows_when_exhausted(client, conn):
    flow = exhausting_flow("skip")
    client.register(flow)
    run_id = client.start_flow(flow, {})
    worker = HandWorker(conn, [flow.slug])
    for _ in range(2):
        task = worker.claim_one("flaky")
        conn.execute("update pgflow.queue set lease_expires_at = now() - interval '1s' "
                     "where task_id = %s", (task.task_id,))
        conn.execute("select pgflow.requeue_expired()")
    assert statuses(client, run_id)["flaky"] == ("skipped", "handler_failed")


def test_conditions_are_part_of_the_shape(client):
    client.register(routed_flow())
    with pytest.raises(ShapeConflictError, match="step 'a' changed its condition"):
        client.register(routed_flow(when_unmet="fail"))
    with pytest.raises(ShapeConflictError, match="step 'a' changed its condition"):
        client.register(routed_flow(when_exhausted="skip"))
    assert client.register(routed_flow(when_unmet="fail"), replace=True) == "replaced"
    assert client.register(routed_flow(when_unmet="fail")) == "verified"


def test_any_language_sees_the_skip_reason_in_step_states(client, conn):
    client.register(routed_flow())
    run_id = client.start_flow("routed", {"kind": "b"})
    drain(client, routed_flow())
    assert conn.execute(
        "select step_slug, status, skip_reason, skipped_at is not null from pgflow.step_states "
        "where run_id = %s and status = 'skipped'", (run_id,)).fetchall() == [
        ("a", "skipped", "condition_unmet", True)]
