"""The engine's fence (claim tokens) and lock order, with two connections where
it is a race: each test here failed on the first version of the engine."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import orjson
import psycopg
import pytest

from pgflow import InvalidInputError, db, worker_api
from tests.integration.helpers import HandWorker, count, map_flow, single_flow


def in_thread(work: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run work() in a thread; its result or exception lands in the dict."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except Exception as exc:  # handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def backend_waiting(conn: psycopg.Connection, application_name: str, timeout: float = 5.0) -> None:
    """Block until a session with that application_name waits on a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s "
            "and wait_event_type = 'Lock'", (application_name,),
        ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.01)
    raise AssertionError(f"{application_name!r} never waited on a lock")


def test_answer_of_a_released_claim_is_refused_after_another_claim(client, conn):
    """Release does not give the attempt number back to a late answer: the
    next claim draws a new token, so A's late answer cannot complete B's claim."""
    client.register(single_flow())
    run_id = client.start_flow("single", 1)
    supervisor_a, supervisor_b = HandWorker(conn, ["single"]), HandWorker(conn, ["single"])
    held_by_a = supervisor_a.claim_one()
    worker_api.release(conn, [(held_by_a.task_id, held_by_a.token)])
    held_by_b = supervisor_b.claim_one()
    assert held_by_b.attempt == held_by_a.attempt == 1
    assert not supervisor_a.complete(held_by_a, "late answer from A")
    assert supervisor_b.complete(held_by_b, "B's answer")
    assert client.get_run(run_id).output == {"only": "B's answer"}


def test_answer_of_a_claim_lost_in_a_crash_is_refused(client, conn):
    """A claim commits asynchronously; if Postgres crashes before it is
    flushed, the task is queued again as if never claimed. The next claim of
    the same attempt must still fence off the lost claim's answer."""
    client.register(single_flow())
    run_id = client.start_flow("single", 1)
    worker = HandWorker(conn, ["single"])
    lost = worker.claim_one()
    # What recovery leaves: the queue row as it was before the claim.
    conn.execute("update pgflow.queue set lease_expires_at = null, token = null, attempt = 0, "
                 "started_at = null, worker_id = null where task_id = %s", (lost.task_id,))
    again = worker.claim_one()
    assert again.attempt == lost.attempt == 1
    assert not worker.complete(lost, "from the lost claim")
    assert worker.complete(again, "from the live claim")
    assert client.get_run(run_id).output == {"only": "from the live claim"}


def test_two_answers_for_one_task_in_one_batch_complete_it_once(client, conn):
    client.register(single_flow())
    run_id = client.start_flow("single", 1)
    task = HandWorker(conn, ["single"]).claim_one()
    answered = worker_api.complete(
        conn, [(task.task_id, task.token, "first"), (task.task_id, task.token, "second")])
    assert list(answered.accepted) == [task.task_id]
    assert client.get_run(run_id).status == "completed"


def test_requeue_skips_a_busy_run_and_a_heartbeat_meanwhile_keeps_the_task(client, conn, dsn):
    """The first engine's requeue_expired picked an expired lease, waited for
    the run's lock, then requeued the task although a heartbeat had extended
    the lease meanwhile. Now it never waits for a run another transaction
    holds, and reads the lease again under its locks."""
    client.register(single_flow())
    client.start_flow("single", 1)
    holder = HandWorker(conn, ["single"])
    task = holder.claim_one()
    conn.execute("update pgflow.queue set lease_expires_at = now() - interval '1 second'")

    with db.connect(dsn, "lock holder") as blocker, db.connect(dsn, "requeuer") as requeuer:
        blocker.execute("begin")
        blocker.execute("select 1 from pgflow.runs for no key update")
        requeuer.execute("set statement_timeout = '2s'")
        assert worker_api.requeue_expired(requeuer) == 0, "a run held elsewhere is skipped"
        assert worker_api.heartbeat(conn, holder.worker_id, [(task.task_id, task.token)]) == set()
        blocker.execute("commit")
        assert worker_api.requeue_expired(requeuer) == 0, "the extended lease wins"
    assert holder.complete(task, "done"), "the holder still holds its task"


def test_an_answer_for_a_run_another_transaction_holds_is_deferred_not_waited_for(
        client, conn, dsn):
    """One locked run must not hold up other runs' answers: the batch writes
    what it can and hands the blocked answer back to be sent again."""
    client.register(single_flow())
    blocked_run, free_run = client.start_flow("single", 1), client.start_flow("single", 2)
    tasks = {t.run_id: t for t in HandWorker(conn, ["single"]).claim(limit=2)}
    with db.connect(dsn, "lock holder") as blocker, db.connect(dsn, "answering") as answering:
        blocker.execute("begin")
        blocker.execute("select 1 from pgflow.runs where run_id = %s for no key update",
                        (blocked_run,))
        answering.execute("set statement_timeout = '2s'")
        answered = worker_api.complete(
            answering, [(t.task_id, t.token, "out") for t in tasks.values()])
        assert answered.deferred == {tasks[blocked_run].task_id}
        assert set(answered.accepted) == {tasks[free_run].task_id}
        blocker.execute("commit")
        again = worker_api.complete(answering, [(tasks[blocked_run].task_id,
                                                 tasks[blocked_run].token, "out")])
        assert set(again.accepted) == {tasks[blocked_run].task_id}
    assert {client.get_run(r).status for r in (blocked_run, free_run)} == {"completed"}


def test_heartbeat_never_waits_for_a_task_being_answered(client, conn, dsn):
    """A heartbeat skips rows another transaction holds instead of waiting:
    waiting for a batch that locks runs first could deadlock."""
    client.register(single_flow(max_attempts=1))
    client.start_flow("single", 1)
    client.start_flow("single", 2)
    holder = HandWorker(conn, ["single"])
    first, second = holder.claim(limit=2)
    with db.connect(dsn, "answering") as answering:
        answering.execute("begin")
        worker_api.fail(answering, [(first.task_id, first.token, "boom")])
        conn.execute("set statement_timeout = '2s'")
        lost = worker_api.heartbeat(conn, holder.worker_id,
                                    [(first.task_id, first.token), (second.task_id, second.token)])
        conn.execute("reset statement_timeout")
        assert lost == set(), "a locked row is neither extended nor reported lost"
        answering.execute("commit")
    lost = worker_api.heartbeat(conn, holder.worker_id,
                                [(first.task_id, first.token), (second.task_id, second.token)])
    assert lost == {first.task_id}, "once the failure is committed, that task is lost"


def test_heartbeat_reports_tasks_requeued_by_another_supervisor(client, conn):
    client.register(single_flow(base_delay=0))
    client.start_flow("single", 1)
    paused = HandWorker(conn, ["single"])
    task = paused.claim_one()
    conn.execute("update pgflow.queue set lease_expires_at = now() - interval '1 second'")
    assert worker_api.requeue_expired(conn) == 1
    assert worker_api.heartbeat(conn, paused.worker_id, [(task.task_id, task.token)]) == {task.task_id}


def test_start_with_a_run_id_taken_by_another_flow_in_a_race_is_refused(client, conn, dsn):
    """Two starts with the same run id race; the loser is of another flow:
    it must not return the winner's run as its own."""
    client.register(single_flow("first"))
    client.register(single_flow("second"))
    run_id = uuid.uuid4()
    with db.connect(dsn, "winner") as winner, db.connect(dsn, "loser") as loser:
        winner.execute("begin")
        winner.execute("select pgflow.start_flow('first', '1', %s)", (run_id,))
        thread, outcome = in_thread(lambda: loser.execute(
            "select pgflow.start_flow('second', '1', %s)", (run_id,)).fetchone())
        backend_waiting(conn, "loser")
        winner.execute("commit")
        thread.join(10)
    assert isinstance(outcome.get("error"), psycopg.Error)
    assert "already exists for flow 'first', not for flow 'second'" in str(outcome["error"])
    assert count(conn, "select count(*) from pgflow.runs") == 1


@pytest.mark.parametrize("call", [
    "select pgflow.complete_tasks('[[1, 2]]')",
    "select pgflow.fail_tasks('[[1, 2, \"x\"], 7]')",
    "select pgflow.release_tasks('{\"task_id\": 1}')",
    "select pgflow.heartbeat(gen_random_uuid(), '[[\"1\", 2]]')",
])
def test_malformed_answers_are_refused_with_the_expected_form(conn, call):
    with pytest.raises(psycopg.Error, match=r"expected a JSON array of \[task_id, token"):
        conn.execute(call)


def test_a_batch_with_one_unstorable_output_writes_the_others(client, conn):
    """Postgres refuses the whole statement for one bad value; the batch is
    written again row by row and only the bad task fails, saying why."""
    client.register(single_flow(max_attempts=1))
    runs = [client.start_flow("single", i) for i in range(3)]
    tasks = sorted(HandWorker(conn, ["single"]).claim(limit=3), key=lambda t: t.input)
    unstorable = orjson.Fragment(b'"nul \\u0000 inside"')  # jsonb cannot hold U+0000
    outputs: list[Any] = ["ok 0", unstorable, "ok 2"]
    answers = [(t.task_id, t.token, o) for t, o in zip(tasks, outputs, strict=True)]
    accepted = worker_api.complete(conn, answers).accepted
    assert set(accepted) == {t.task_id for t in tasks}
    assert "Output could not be stored" in (accepted[tasks[1].task_id].error or "")
    assert [client.get_run(r).status for r in runs] == ["completed", "failed", "completed"]
    assert "Output could not be stored: unsupported Unicode escape" in client.get_run(runs[1]).error


def test_permanent_failure_removes_the_runs_queued_tasks_from_the_queue(client, conn):
    client.register(map_flow(max_attempts=1))
    client.start_flow("mapper", [1, 2, 3])
    worker = HandWorker(conn, ["mapper"])
    worker.fail(worker.claim_one(), "nope")
    assert count(conn, "select count(*) from pgflow.queue") == 0
    assert worker.claim() == []


@pytest.mark.parametrize("column, value", [
    ("timeout", 3e6), ("max_attempts", 100_000), ("base_delay", 1e6),
])
def test_out_of_range_options_are_refused_by_the_schema(conn, column, value):
    options = {column: value, "steps": {}}
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "select pgflow.register_flow('huge', %s, %s)",
            (psycopg.types.json.Jsonb({"steps": [{"slug": "s", "type": "single",
                                                  "depends_on": []}]}),
             psycopg.types.json.Jsonb(options)),
        )


def test_replacing_a_flow_notifies_waiters_of_the_runs_it_cancels(client, conn, dsn):
    from pgflow import Flow

    client.register(single_flow("evolving"))
    run_id = client.start_flow("evolving", 1)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgflow_runs")
        changed = Flow("evolving")

        @changed.step()
        def other(input, ctx): ...

        assert client.register(changed, replace=True) == "replaced"
        payloads = [n.payload for n in listener.notifies(timeout=1, stop_after=1)]
    assert str(run_id) in ",".join(payloads)
    assert client.get_run(run_id).status == "cancelled"


def test_start_flows_starts_many_runs_in_order_and_is_idempotent_per_id(client, conn):
    client.register(single_flow())
    ids = client.start_flows("single", [{"i": i} for i in range(5)])
    assert [client.get_run(r).input for r in ids] == [{"i": i} for i in range(5)]
    again = client.start_flows("single", [{"i": 9}, {"i": 10}], run_ids=[ids[0], None])
    assert again[0] == ids[0] and again[1] not in ids
    assert client.get_run(ids[0]).input == {"i": 0}, "an existing id is returned as it is"
    assert count(conn, "select count(*) from pgflow.runs") == 6


def test_start_flows_writes_nothing_when_one_input_is_refused(client, conn):
    client.register(map_flow())
    with pytest.raises(InvalidInputError, match=r"root map step 'double' needs a JSON array"):
        client.start_flows("mapper", [[1], {"not": "array"}, [2]])
    assert count(conn, "select count(*) from pgflow.runs") == 0


def test_deleting_an_unfinished_run_by_hand_leaves_nothing_claimable_behind(client, conn):
    """Its queue rows go with its tasks; an orphan would be picked by every
    claim and skipped, and enough of them would starve the queue."""
    client.register(single_flow())
    doomed = client.start_flows("single", list(range(5)))
    survivor = client.start_flow("single", "me")
    conn.execute("delete from pgflow.runs where run_id = any(%s)", (doomed,))
    assert count(conn, "select count(*) from pgflow.queue") == 1
    (task,) = HandWorker(conn, ["single"]).claim(limit=1)
    assert task.run_id == survivor
