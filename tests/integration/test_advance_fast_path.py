"""Migration 0008: _advance starts unconditional single steps itself and
hands anything else to _advance_general. Both must leave the same rows."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from pgflow import Flow
from tests.integration.helpers import HandWorker

STEP_STATE = ("step_slug", "status", "skip_reason", "skipped_at is null", "started_at is null",
              "completed_at is null", "output", "task_count", "remaining_tasks")
TASK = ("t.step_slug", "t.task_index", "t.input", "t.status", "t.attempt",
        "round(extract(epoch from t.visible_at - r.started_at))")
QUEUE = ("t.step_slug", "q.lane", "q.limited", "q.visible_at = t.visible_at", "q.token is null")


def mixed_flow() -> Flow:
    """Two root single steps (one delayed and limited) and a dependent one."""
    flow = Flow("fast_path", max_concurrency=5)

    @flow.step()
    def plain(input, ctx):
        return input

    @flow.step(start_delay=30, max_concurrency=2)
    def delayed(input, ctx):
        return input

    @flow.step(depends_on=["plain", "delayed"])
    def after(deps, ctx):
        return deps

    return flow


def rows(conn: psycopg.Connection, run_id: uuid.UUID) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "step_states": conn.execute(
            f"select {', '.join(STEP_STATE)} from pgflow.step_states where run_id = %s "
            "order by step_slug", (run_id,)).fetchall(),
        "tasks": conn.execute(
            f"select {', '.join(TASK)} "
            "from pgflow.tasks t join pgflow.runs r using (run_id) where t.run_id = %s "
            "order by t.step_slug", (run_id,)).fetchall(),
        "queue": conn.execute(
            f"select {', '.join(QUEUE)} from pgflow.queue q join pgflow.tasks t using (task_id) "
            "where t.run_id = %s order by t.step_slug", (run_id,)).fetchall(),
    }


def general_calls(conn: psycopg.Connection, start: str, *params: Any) -> int:
    """Run `start` in a transaction; how many times it called _advance_general."""
    with conn.transaction():
        conn.execute("set local track_functions = 'all'")
        conn.execute(start, params)
        row = conn.execute("select pg_stat_get_xact_function_calls("
                           "'pgflow._advance_general(uuid[])'::regprocedure)").fetchone()
    assert row is not None
    return int(row[0] or 0)


def unstart(conn: psycopg.Connection, run_id: uuid.UUID) -> None:
    """Put a just-started run back where _advance found it."""
    conn.execute("delete from pgflow.queue q using pgflow.tasks t "
                 "where q.task_id = t.task_id and t.run_id = %s", (run_id,))
    conn.execute("delete from pgflow.tasks where run_id = %s", (run_id,))
    conn.execute("update pgflow.step_states set status = 'created', started_at = null, "
                 "task_count = null, remaining_tasks = null "
                 "where run_id = %s and status = 'started'", (run_id,))


def test_the_fast_path_writes_what_the_general_statement_writes(client, conn):
    client.register(mixed_flow())
    fast, general = uuid.uuid4(), uuid.uuid4()
    for run_id in (fast, general):
        assert general_calls(conn, "select pgflow.start_flow('fast_path', '{\"n\": 1}', %s)",
                             run_id) == 0
    unstart(conn, general)
    conn.execute("select pgflow._advance_general(array[%s::uuid])", (general,))

    fast_rows, general_rows = rows(conn, fast), rows(conn, general)
    assert fast_rows == general_rows
    assert [s[:2] for s in fast_rows["step_states"]] == [
        ("after", "created"), ("delayed", "started"), ("plain", "started")]
    assert fast_rows["queue"] == [("delayed", "delayed", True, True, True),
                                  ("plain", "", True, True, True)]
    assert [t[-1] for t in fast_rows["tasks"]] == [30, 0], "start_delay applied"


def test_a_run_with_a_map_or_a_condition_ready_goes_the_general_way(client, conn):
    flow = Flow("mixed_roots")

    @flow.step()
    def plain(input, ctx):
        return input

    @flow.map()
    def each(item, ctx):
        return item

    @flow.step(if_={"go": True})
    def maybe(input, ctx):
        return input

    client.register(flow)
    run_id = uuid.uuid4()
    assert general_calls(conn, "select pgflow.start_flow('mixed_roots', '[1, 2, 3]', %s)",
                         run_id) == 1
    states = dict(conn.execute("select step_slug, status from pgflow.step_states "
                               "where run_id = %s", (run_id,)).fetchall())
    assert states == {"plain": "started", "each": "started", "maybe": "skipped"}
    tasks = conn.execute("select step_slug, count(*) from pgflow.tasks where run_id = %s "
                         "group by 1 order by 1", (run_id,)).fetchall()
    assert tasks == [("each", 3), ("plain", 1)]


def test_a_chains_next_step_is_started_by_the_fast_path_and_notified(client, conn, dsn):
    flow = Flow("chain2")

    @flow.step()
    def one(input, ctx):
        return input

    @flow.step(depends_on=["one"])
    def two(deps, ctx):
        return deps

    client.register(flow)
    run_id = client.start_flow("chain2", 7)
    worker = HandWorker(conn, ["chain2"])
    task = worker.claim_one("one")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgflow_tasks")
        assert worker.complete(task, 7)
        notified = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert notified == ["chain2"]
    assert conn.execute("select status, task_count from pgflow.step_states "
                        "where run_id = %s and step_slug = 'two'", (run_id,)).fetchone() == (
        "started", 1)
    assert conn.execute("select input from pgflow.tasks where run_id = %s and step_slug = 'two'",
                        (run_id,)).fetchone() == (None,)
