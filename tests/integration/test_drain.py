"""Whole flows run in-process with executor.drain, checked through Client.get_run."""

from __future__ import annotations

import asyncio
import time

import pytest

from executor import drain
from pgflow import Flow, FlowDefinitionError
from tests.integration.helpers import count, diamond_flow


def registered(client, flow: Flow) -> Flow:
    client.register(flow)
    return flow


def test_diamond_output_combines_both_branches(client):
    flow = registered(client, diamond_flow())
    run_id = client.start_flow(flow, {"n": 1})
    assert drain(client, flow) == 4
    run = client.get_run(run_id)
    assert run.status == "completed"
    assert run.output == {"d": 2 * 2 + 2 * 3}


def test_root_map_over_1000_elements_is_aggregated_in_order(client):
    flow = Flow("squares")

    @flow.map()
    def square(n, ctx):
        assert ctx.task_index == n
        return n * n

    registered(client, flow)
    run_id = client.start_flow(flow, list(range(1000)))
    assert drain(client, flow) == 1000
    run = client.get_run(run_id)
    assert run.output == {"square": [n * n for n in range(1000)]}


def test_map_over_an_empty_array(client):
    flow = Flow("empty_map")

    @flow.step()
    def produce(input, ctx):
        return []

    @flow.map(array="produce")
    def each(item, ctx):
        raise AssertionError("no element, no call")

    @flow.step(depends_on=["each"])
    def after(deps, ctx):
        return {"got": deps["each"]}

    registered(client, flow)
    run_id = client.start_flow(flow, None)
    assert drain(client, flow) == 2
    assert client.get_run(run_id).output == {"after": {"got": []}}


def test_falsy_outputs_survive_the_round_trip(client):
    flow = Flow("falsy")
    values = {"zero": 0, "false": False, "empty": "", "none": None}
    for slug, value in values.items():
        flow.step(slug=slug)(lambda input, ctx, value=value: value)

    @flow.step(depends_on=list(values))
    def seen(deps, ctx):
        return deps

    registered(client, flow)
    run_id = client.start_flow(flow, {})
    drain(client, flow)
    run = client.get_run(run_id)
    assert run.output == {"seen": values}
    assert {slug: run.steps[slug].output for slug in values} == values


def test_fails_twice_then_succeeds_on_attempt_three(client):
    flow = Flow("flaky", max_attempts=3, base_delay=0)
    attempts: list[int] = []

    @flow.step()
    def flaky(input, ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt}")
        return f"ok on {ctx.attempt}"

    registered(client, flow)
    run_id = client.start_flow(flow, None)
    drain(client, flow)
    run = client.get_run(run_id)
    assert attempts == [1, 2, 3]
    assert (run.status, run.output) == ("completed", {"flaky": "ok on 3"})
    assert run.steps["flaky"].attempts == 3


def test_exhausted_attempts_fail_the_run_and_cancel_the_other_branch(client, conn):
    flow = Flow("broken", max_attempts=2, base_delay=0)

    @flow.step()
    def start(input, ctx):
        return 1

    @flow.step(depends_on=["start"])
    def bad(deps, ctx):
        raise RuntimeError("Something broke")

    @flow.step(depends_on=["start"], start_delay=3600)
    def slow(deps, ctx):
        return "never"

    registered(client, flow)
    run_id = client.start_flow(flow, None)
    drain(client, flow)
    run = client.get_run(run_id)
    assert (run.status, run.failed_step) == ("failed", "bad")
    assert run.error == "RuntimeError: Something broke"
    assert run.steps["bad"].attempts == 2
    assert run.steps["slow"].status == "cancelled"
    assert count(conn, "select count(*) from pgflow.tasks where step_slug = 'slow' "
                       "and status = 'cancelled'") == 1


def test_output_that_is_not_json_fails_with_a_clear_error(client):
    flow = Flow("unjson", max_attempts=1)

    @flow.step()
    def make_set(input, ctx):
        return {"items": {1, 2}}

    registered(client, flow)
    run_id = client.start_flow(flow, None)
    drain(client, flow)
    run = client.get_run(run_id)
    assert run.status == "failed"
    assert run.error.startswith("Output is not JSON-serializable")
    assert "set" in run.error


def test_handler_that_sleeps_past_its_timeout_is_timed_out(client):
    flow = Flow("sleepy", max_attempts=1)
    finished: list[bool] = []

    @flow.step(timeout=0.2)
    def nap(input, ctx):
        try:
            time.sleep(5)
        finally:
            finished.append(True)

    registered(client, flow)
    run_id = client.start_flow(flow, None)
    started = time.monotonic()
    drain(client, flow)
    assert time.monotonic() - started < 2
    run = client.get_run(run_id)
    assert (run.status, run.error) == ("failed", "Task timed out after 200ms")
    assert finished == [True], "the soft limit lets finally blocks run"


def test_flow_input_is_loaded_lazily_in_dependent_steps(client):
    flow = Flow("lazy")

    @flow.step()
    def first(input, ctx):
        assert ctx.flow_input == {"x": 1}
        return 2

    @flow.step(depends_on=["first"])
    def second(deps, ctx):
        return deps["first"] + ctx.flow_input["x"]

    registered(client, flow)
    run_id = client.start_flow(flow, {"x": 1})
    drain(client, flow)
    assert client.get_run(run_id).output == {"second": 3}


def test_async_handlers_run_to_completion(client):
    flow = Flow("async_flow")

    @flow.step()
    async def fetch(input, ctx):
        await asyncio.sleep(0.01)
        return input * 2

    registered(client, flow)
    run_id = client.start_flow(flow, 21)
    drain(client, flow)
    assert client.get_run(run_id).output == {"fetch": 42}


def test_wait_for_retries_and_max_tasks(client):
    flow = Flow("retry_later", max_attempts=2, base_delay=0.3)

    @flow.step()
    def once_bad(input, ctx):
        if ctx.attempt == 1:
            raise ValueError("first try fails")
        return "second try"

    registered(client, flow)
    run_id = client.start_flow(flow, None)
    assert drain(client, flow) == 1, "without waiting, the retry is not due yet"
    assert client.get_run(run_id).status == "started"
    assert drain(client, flow, wait_for_retries=True) == 1
    assert client.get_run(run_id).output == {"once_bad": "second try"}

    for _ in range(3):
        client.start_flow(flow, None)
    assert drain(client, flow, max_tasks=2) == 2


def test_drain_needs_flows(client):
    with pytest.raises(FlowDefinitionError, match="at least one Flow"):
        drain(client)
