"""Client.prune / pgflow.prune_runs and the supervisors' retention tick."""

from __future__ import annotations

import datetime
import uuid

import psycopg
import pytest

from executor import drain
from pgflow import db
from tests.integration.helpers import count, diamond_flow


def age(conn, run_ids, days: float) -> None:
    """Move runs (start and finish) `days` into the past."""
    conn.execute(
        "update pgflow.runs set started_at = started_at - %(d)s * interval '1 day', "
        "completed_at = completed_at - %(d)s * interval '1 day', "
        "failed_at = failed_at - %(d)s * interval '1 day', "
        "cancelled_at = cancelled_at - %(d)s * interval '1 day' "
        "where run_id = any (%(ids)s)", {"d": days, "ids": list(run_ids)})


def finished_runs(client, flow, n: int) -> list[uuid.UUID]:
    ids = client.start_flows(flow, [{"n": i} for i in range(n)])
    drain(client, flow)
    return ids


def rows(conn, run_ids) -> tuple[int, int, int]:
    ids = list(run_ids)
    return (count(conn, "select count(*) from pgflow.runs where run_id = any (%s)", ids),
            count(conn, "select count(*) from pgflow.step_states where run_id = any (%s)", ids),
            count(conn, "select count(*) from pgflow.tasks where run_id = any (%s)", ids))


def test_prune_deletes_finished_runs_older_than_the_cutoff_in_batches(client, conn):
    flow = diamond_flow()
    client.register(flow)
    old = finished_runs(client, flow, 25)
    age(conn, old, 10)
    recent = finished_runs(client, flow, 3)
    old_running = client.start_flow(flow, {"n": 99})
    age(conn, [old_running], 10)
    old_failed = client.start_flow(flow, {"n": 98})
    client.cancel_run(old_failed)
    age(conn, [old_failed], 10)

    dry = client.prune(datetime.timedelta(days=7), dry_run=True)
    assert (dry.runs, dry.tasks, dry.batches, dry.dry_run) == (26, 100 + 1, 0, True)
    assert rows(conn, old) == (25, 100, 100), "a dry run deletes nothing"

    result = client.prune(datetime.timedelta(days=7), batch_size=10)
    assert (result.runs, result.tasks, result.batches) == (26, 101, 3)
    assert result.longest_batch_seconds > 0 and not result.dry_run
    assert rows(conn, [*old, old_failed]) == (0, 0, 0)
    assert rows(conn, recent) == (3, 12, 12)
    assert client.get_run(old_running).status == "started", "unfinished runs are never pruned"
    assert client.prune(datetime.timedelta(days=7)).runs == 0


def test_prune_goes_by_finish_time_and_takes_a_cutoff_datetime(client, conn):
    flow = diamond_flow()
    client.register(flow)
    long_run = client.start_flow(flow, {"n": 1})
    conn.execute("update pgflow.runs set started_at = now() - interval '30 days' "
                 "where run_id = %s", (long_run,))
    drain(client, flow)  # started a month ago, finished just now
    assert client.prune(datetime.timedelta(days=7)).runs == 0
    cutoff = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
    result = client.prune(cutoff)
    assert result.runs == 1 and result.cutoff == cutoff


def test_prune_skips_a_run_another_transaction_holds_instead_of_waiting(client, conn, dsn):
    flow = diamond_flow()
    client.register(flow)
    held, free = finished_runs(client, flow, 2)
    with db.connect(dsn, "holder") as holder, holder.transaction():
        holder.execute("select 1 from pgflow.runs where run_id = %s for update", (held,))
        client.connection().execute("set lock_timeout = '1s'")  # waiting would fail
        assert client.prune(datetime.timedelta(0)).runs == 1
    assert rows(conn, [held]) == (1, 4, 4) and rows(conn, [free]) == (0, 0, 0)


@pytest.mark.parametrize("older_than, batch_size, error", [
    (datetime.timedelta(days=-1), 10, ValueError),
    ("7d", 10, TypeError),
    (datetime.timedelta(days=1), 0, ValueError),
    (datetime.timedelta(days=1), True, ValueError),
])
def test_prune_refuses_bad_arguments(client, older_than, batch_size, error):
    with pytest.raises(error):
        client.prune(older_than, batch_size=batch_size)


def test_prune_runs_refuses_a_null_cutoff(conn):
    with pytest.raises(psycopg.Error, match="give a cutoff time and a limit"):
        conn.execute("select * from pgflow.prune_runs(null, 10)")


def tick(conn, worker_id, older_than_s: float = 0, limit: int = 2, tick_s: float = 3600):
    return conn.execute("select ran, runs, tasks from pgflow.retention_tick(%s, %s, %s, %s)",
                        (worker_id, older_than_s, limit, tick_s)).fetchone()


def test_one_supervisor_wins_each_retention_tick_and_works_through_the_backlog(client, conn):
    flow = diamond_flow()
    client.register(flow)
    finished_runs(client, flow, 5)
    first, second = uuid.uuid4(), uuid.uuid4()
    assert tick(conn, first) == (True, 2, 8)
    assert tick(conn, second) == (False, 0, 0), "the tick is taken"
    assert tick(conn, first) == (True, 2, 8), "its winner goes on with the backlog"
    # The next tick is anyone's: the first to come by takes it.
    conn.execute("update pgflow.chores set tick = tick - 1 where chore = 'retention'")
    assert tick(conn, second) == (True, 1, 4)
    assert tick(conn, first) == (False, 0, 0)
    assert count(conn, "select count(*) from pgflow.runs") == 0
    assert tick(conn, second, older_than_s=86400) == (True, 0, 0)


def test_a_retention_tick_skips_while_another_supervisor_prunes(client, conn, dsn):
    with db.connect(dsn, "pruner") as pruner, pruner.transaction():
        pruner.execute("select 1 from pgflow.chores where chore = 'retention' for update")
        conn.execute("set lock_timeout = '1s'")  # waiting would fail
        assert tick(conn, uuid.uuid4()) == (False, 0, 0)
