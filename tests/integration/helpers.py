"""Flows and a hand-driven worker for tests that call the SQL functions directly."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from pgflow import ClaimedTask, Flow, worker_api


def diamond_flow(slug: str = "diamond", **options: Any) -> Flow:
    flow = Flow(slug, **options)

    @flow.step()
    def a(input, ctx):
        return {"n": input["n"] + 1}

    @flow.step(depends_on=["a"])
    def b(deps, ctx):
        return deps["a"]["n"] * 2

    @flow.step(depends_on=["a"])
    def c(deps, ctx):
        return deps["a"]["n"] * 3

    @flow.step(depends_on=["b", "c"])
    def d(deps, ctx):
        return deps["b"] + deps["c"]

    return flow


def map_flow(slug: str = "mapper", **options: Any) -> Flow:
    flow = Flow(slug, **options)

    @flow.map()
    def double(item, ctx):
        return item * 2

    @flow.step(depends_on=["double"])
    def total(deps, ctx):
        return sum(deps["double"])

    return flow


def chain_map_flow(slug: str = "chain_map") -> Flow:
    """A single step produces the array a dependent map fans out over."""
    flow = Flow(slug)

    @flow.step()
    def produce(input, ctx):
        return input

    @flow.map(array="produce")
    def each(item, ctx):
        return item

    return flow


def single_flow(slug: str = "single", **options: Any) -> Flow:
    flow = Flow(slug, **options)

    @flow.step()
    def only(input, ctx):
        return input

    return flow


class HandWorker:
    """Claims and answers tasks through pgflow.worker_api, as a supervisor would."""

    def __init__(self, conn: psycopg.Connection, flows: list[str]) -> None:
        self.conn = conn
        self.flows = flows
        self.worker_id = uuid.uuid4()
        worker_api.register_worker(conn, self.worker_id, "test-host", 1, flows)

    def claim(self, limit: int = 100, lease_grace: float = 30) -> list[ClaimedTask]:
        return worker_api.claim(self.conn, self.worker_id, self.flows, limit, lease_grace)

    def claim_one(self, step_slug: str | None = None) -> ClaimedTask:
        tasks = self.claim(limit=100)
        matching = [t for t in tasks if step_slug is None or t.step_slug == step_slug]
        assert matching, f"no claimable task for step {step_slug!r}; claimed {tasks}"
        # Give the others back untouched.
        others = [(t.task_id, t.token) for t in tasks if t is not matching[0]]
        worker_api.release(self.conn, others)
        return matching[0]

    def complete(self, task: ClaimedTask, output: Any) -> bool:
        return task.task_id in worker_api.complete(
            self.conn, [(task.task_id, task.token, output)]
        ).accepted

    def fail(self, task: ClaimedTask, error: str) -> bool:
        return task.task_id in worker_api.fail(
            self.conn, [(task.task_id, task.token, error)]).accepted


def count(conn: psycopg.Connection, sql: str, *params: Any) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])
