"""Registering flows: created, verified, updated, refused, replaced."""

from __future__ import annotations

import threading

import pytest

from pgflow import Flow, ShapeConflictError
from tests.integration.helpers import HandWorker, count, diamond_flow


def test_register_created_then_verified(client, conn):
    assert client.register(diamond_flow()) == "created"
    assert client.register(diamond_flow()) == "verified"
    steps = conn.execute(
        "select step_slug, step_type, deps_count, is_leaf from pgflow.steps "
        "where flow_slug = 'diamond' order by step_index"
    ).fetchall()
    assert steps == [("a", "single", 0, False), ("b", "single", 1, False),
                     ("c", "single", 1, False), ("d", "single", 2, True)]
    assert count(conn, "select count(*) from pgflow.deps where flow_slug = 'diamond'") == 4


def test_option_changes_update_in_place(client, conn):
    client.register(diamond_flow())
    assert client.register(diamond_flow(max_attempts=7, timeout=12)) == "updated"
    row = conn.execute(
        "select max_attempts, timeout from pgflow.flows where flow_slug = 'diamond'").fetchone()
    assert row == (7, 12)


def test_changed_shape_is_refused_and_writes_nothing(client, conn):
    client.register(diamond_flow())
    before = conn.execute("select shape from pgflow.flows").fetchone()
    changed = Flow("diamond")

    @changed.step()
    def a(input, ctx): ...

    with pytest.raises(ShapeConflictError) as info:
        client.register(changed)
    message = str(info.value)
    assert "Flow 'diamond'" in message
    assert "step 'd' was removed" in message
    assert "replace=True" in message
    assert conn.execute("select shape from pgflow.flows").fetchone() == before
    assert count(conn, "select count(*) from pgflow.steps") == 4


def test_sql_refuses_a_changed_shape_too(client, conn):
    client.register(diamond_flow())
    with pytest.raises(Exception, match="different shape"):
        conn.execute(
            "select pgflow.register_flow('diamond', %s::jsonb, '{}'::jsonb)",
            ('{"steps": [{"slug": "a", "type": "single", "depends_on": []}]}',),
        )


def test_replace_cancels_unfinished_runs_and_keeps_history(client, conn):
    client.register(diamond_flow())
    run_id = client.start_flow("diamond", {"n": 1})
    replacement = Flow("diamond")

    @replacement.step()
    def only(input, ctx): ...

    assert client.register(replacement, replace=True) == "replaced"
    old = client.get_run(run_id)
    assert old.status == "cancelled"
    assert "replaced" in old.error
    assert set(old.steps) == {"a", "b", "c", "d"}
    assert count(conn, "select count(*) from pgflow.tasks where status = 'queued'") == 0
    new_run = client.start_flow("diamond", {"n": 1})
    assert list(client.get_run(new_run).steps) == ["only"]


def test_register_is_safe_when_many_processes_do_it_at_once(client, dsn):
    from pgflow import Client

    results: list[object] = []

    def run() -> None:
        with Client(dsn) as c:
            try:
                results.append(c.register(diamond_flow()))
            except Exception as exc:  # collected and asserted below
                results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["created"] + ["verified"] * 5


def test_sql_refuses_dependencies_on_later_steps(conn):
    with pytest.raises(Exception, match="unknown or not an earlier step"):
        conn.execute(
            "select pgflow.register_flow('bad', %s::jsonb, '{}'::jsonb)",
            ('{"steps": [{"slug": "a", "type": "single", "depends_on": ["b"]},'
             ' {"slug": "b", "type": "single", "depends_on": ["a"]}]}',),
        )
    assert count(conn, "select count(*) from pgflow.flows") == 0


def test_a_worker_sees_new_options_on_its_next_claim(client, conn):
    client.register(diamond_flow(timeout=30))
    client.start_flow("diamond", {"n": 1})
    client.register(diamond_flow(timeout=4))
    task = HandWorker(conn, ["diamond"]).claim_one()
    assert task.timeout_ms == 4000
