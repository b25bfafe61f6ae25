"""Claims carry a small flow input for tasks whose input is something else,
so executors need no connection of their own to read ctx.flow_input."""

from __future__ import annotations

import uuid

import orjson

from executor import drain
from pgflow import Flow, worker_api


def flow_reading_its_input() -> Flow:
    flow = Flow("reads_its_input")

    @flow.step()
    def first(input, ctx):
        return [1, 2]

    @flow.step(depends_on=["first"])
    def then(deps, ctx):
        return ctx.flow_input["tag"]

    @flow.map(array="first")
    def each(item, ctx):
        return [item, ctx.flow_input["tag"]]

    return flow


def claim_all(conn, flow: Flow) -> list:
    return worker_api.claim(conn, uuid.uuid4(), [flow.slug], 100)


def test_dependent_and_map_tasks_carry_a_small_flow_input(client, conn):
    flow = flow_reading_its_input()
    client.register(flow)
    client.start_flow(flow, {"tag": "small"})
    (root,) = claim_all(conn, flow)
    assert root.input_is_flow_input and root.flow_input_json is None, "the input is the flow input"
    worker_api.complete(conn, [(root.task_id, root.token, [1, 2])])
    dependents = claim_all(conn, flow)
    assert sorted(t.step_slug for t in dependents) == ["each", "each", "then"]
    assert [orjson.loads(t.flow_input_json) for t in dependents] == [{"tag": "small"}] * 3


def test_a_flow_input_over_4000_bytes_is_left_to_the_executor(client, conn):
    flow = flow_reading_its_input()
    client.register(flow)
    large = {"tag": "large", "pad": "".join(str(i) for i in range(1500))}  # 5 KB of JSON
    huge_but_compressible = {"tag": "huge", "pad": "x" * 100_000}  # stored in ~1 KB
    just_fits = {"tag": "fits", "pad": "x" * (4000 - len('{"pad": "", "tag": "fits"}'))}
    for value in (large, huge_but_compressible, just_fits):
        client.start_flow(flow, value)
    roots = claim_all(conn, flow)
    worker_api.complete(conn, [(t.task_id, t.token, [1, 2]) for t in roots])
    dependents = claim_all(conn, flow)
    assert len(dependents) == 9
    carried = {orjson.loads(t.flow_input_json)["tag"] for t in dependents if t.flow_input_json}
    assert carried == {"fits"}, "4,000 bytes of JSON at most"


def test_drain_runs_handlers_that_read_the_flow_input(client):
    flow = flow_reading_its_input()
    client.register(flow)
    small = client.start_flow(flow, {"tag": "s"})
    large = client.start_flow(flow, {"tag": "l", "pad": "x" * 5000})
    assert drain(client, flow) == 8
    assert client.get_run(small).output == {"then": "s", "each": [[1, "s"], [2, "s"]]}
    assert client.get_run(large).output == {"then": "l", "each": [[1, "l"], [2, "l"]]}
