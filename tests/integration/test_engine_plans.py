"""The plans Postgres runs inside the engine's functions stay index-driven
whatever the statistics say: claims and answers must not read held tasks,
finished tasks or tasks of flows the worker does not serve.

auto_explain (contrib) logs every nested statement's plan with row counts;
with client_min_messages = log those plans reach this connection as notices.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from pgflow import db, worker_api
from tests.integration.helpers import HandWorker, single_flow

ROWS_REMOVED = re.compile(r"Rows Removed by (Join )?Filter: (\d+)")
TABLE_NODE = re.compile(r"\bon (queue|tasks|runs|step_states|steps|deps|flows|workers)\b")
SEQ_SCAN = re.compile(r"Seq Scan on (queue|tasks|runs|step_states)\b")


def rows_thrown_away(plan: str) -> int:
    """The most rows one node of the plan read and discarded: join filters,
    and filters on table scans (not the validation of the call's own input)."""
    worst, node = 0, ""
    for line in plan.splitlines():
        if "->" in line or not line.startswith(" "):
            node = line
        match = ROWS_REMOVED.search(line)
        if match and (match[1] or TABLE_NODE.search(node)):
            worst = max(worst, int(match[2]))
    return worst


class PlanLog:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.plans: list[str] = []
        conn.add_notice_handler(lambda diag: self.plans.append(diag.message_primary or ""))

    def clear(self) -> None:
        self.plans.clear()

    def worst(self) -> tuple[int, str]:
        """The most rows any plan node read and threw away, and that plan."""
        return max(((rows_thrown_away(p), p) for p in self.plans), default=(0, ""))

    def seq_scans(self) -> list[str]:
        return [p for p in self.plans if SEQ_SCAN.search(p)]


@pytest.fixture
def explained(dsn: str) -> Iterator[tuple[psycopg.Connection, PlanLog]]:
    conn = db.connect(dsn, "pgflow plans")
    try:
        conn.execute("load 'auto_explain'")
    except psycopg.Error:
        conn.close()
        pytest.skip("auto_explain is not installed on this Postgres")
    for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_analyze = on",
                    "auto_explain.log_nested_statements = on", "client_min_messages = log"):
        conn.execute(f"set {setting}")
    log = PlanLog(conn)
    try:
        yield conn, log
    finally:
        conn.close()


def stale_statistics(conn: psycopg.Connection) -> None:
    """What a new install has: tables analyzed while (nearly) empty."""
    for table in ("queue", "tasks", "runs", "step_states"):
        conn.execute(f"analyze pgflow.{table}")


def test_answers_do_not_read_the_tasks_other_workers_hold(client, conn, explained):
    worker_conn, log = explained
    client.register(single_flow(max_attempts=2, base_delay=0))
    stale_statistics(conn)
    client.start_flows("single", list(range(2100)))
    held = HandWorker(conn, ["single"]).claim(limit=2000)
    assert len(held) == 2000
    worker = HandWorker(worker_conn, ["single"])
    log.clear()
    tasks = worker.claim(limit=50)
    worker_api.complete(worker_conn, [(t.task_id, t.token, 1) for t in tasks[:25]])
    worker_api.fail(worker_conn, [(t.task_id, t.token, "x") for t in tasks[25:]])
    worker_api.heartbeat(worker_conn, worker.worker_id, [(t.task_id, t.token) for t in held[:200]])
    worker_api.requeue_expired(worker_conn)
    removed, plan = log.worst()
    assert removed < 200, plan
    assert log.seq_scans() == []


def test_a_claim_skips_tasks_of_flows_the_worker_does_not_serve(client, conn, explained):
    worker_conn, log = explained
    client.register(single_flow("unserved"))
    client.register(single_flow("served"))
    stale_statistics(conn)
    client.start_flows("unserved", list(range(3000)))  # older than the served ones
    client.start_flows("served", list(range(20)))
    worker = HandWorker(worker_conn, ["served"])
    log.clear()
    assert len(worker.claim(limit=10)) == 10
    assert worker_api.seconds_until_next_task(worker_conn, ["served"]) is not None
    removed, plan = log.worst()
    assert removed < 100, plan
    assert log.seq_scans() == []


def test_a_limited_claim_reads_neither_waiting_nor_held_tasks_beyond_its_limit(
        client, conn, explained):
    from pgflow import Flow

    flow = Flow("limited", max_concurrency=50)
    flow.step(slug="capped", max_concurrency=5)(lambda input: input)
    flow.step(slug="free")(lambda input: input)
    client.register(flow)
    stale_statistics(conn)
    client.start_flows("limited", list(range(3000)))
    held = HandWorker(conn, ["limited"]).claim(limit=40)  # 5 capped (full), 35 free
    assert sum(t.step_slug == "capped" for t in held) == 5
    worker_conn, log = explained
    worker = HandWorker(worker_conn, ["limited"])
    log.clear()
    tasks = worker.claim(limit=20)
    assert sorted({t.step_slug for t in tasks}) == ["free"] and len(tasks) == 10
    assert worker_api.seconds_until_next_task(worker_conn, ["limited"]) is None
    worker_api.complete(worker_conn, [(t.task_id, t.token, 1) for t in tasks])
    removed, plan = log.worst()
    assert removed < 100, plan
    assert log.seq_scans() == []


def test_readying_steps_reads_only_their_runs_sources_and_conditions(client, conn, explained):
    """Plans made while the tables were empty (a new install, statistics never
    gathered) must still find a step's sources by the whole key."""
    from pgflow import Flow

    flow = Flow("gated")
    flow.step(slug="produce")(lambda input: input)
    flow.map(slug="each", array="produce")(lambda item: item)
    flow.step(slug="check", depends_on=["produce"], if_={"produce": [1]})(lambda deps: deps)
    flow.step(slug="after", depends_on=["produce"])(lambda deps: deps)
    client.register(flow)
    worker_conn, log = explained
    worker = HandWorker(worker_conn, ["gated"])
    client.start_flow("gated", [1, 2])  # the worker's plans are made now, on empty tables
    worker_api.complete(worker_conn, [(t.task_id, t.token, [1, 2]) for t in worker.claim()])
    client.start_flows("gated", [[1, 2]] * 2000)
    tasks = HandWorker(conn, ["gated"]).claim(limit=1990)
    worker_api.complete(conn, [(t.task_id, t.token, [1, 2]) for t in tasks])
    last = [t for t in worker.claim(limit=100) if t.step_slug == "produce"]
    log.clear()
    worker_api.complete(worker_conn, [(t.task_id, t.token, [1, 2]) for t in last])
    removed, plan = log.worst()
    assert removed < 100, plan
    assert log.seq_scans() == []


def test_readying_dependent_steps_reads_only_the_runs_answered(client, conn, explained):
    """With statistics that call pgflow.runs tiny, the plan that readies
    dependents used to scan every started run (6,667 of them, 30 ms per
    batch of 100 instead of 5)."""
    from pgflow import Flow

    worker_conn, log = explained
    chain = Flow("chain")
    chain.step(slug="a")(lambda i, c: None)
    chain.step(slug="b", depends_on=["a"])(lambda d, c: None)
    client.register(chain)
    stale_statistics(conn)
    conn.execute("select count(pgflow.start_flow('chain', to_jsonb(i))) from generate_series(1, 3000) i")
    worker = HandWorker(worker_conn, ["chain"])
    tasks = worker.claim(limit=50)
    log.clear()
    worker_api.complete(worker_conn, [(t.task_id, t.token, 1) for t in tasks])
    assert len(worker.claim(limit=100)) >= 50, "the dependents were readied"
    worst = max((int(n) for p in log.plans for n in re.findall(r"actual time=\S+ rows=(\d+)", p)),
                default=0)
    assert worst <= 200, "no plan node reads thousands of rows to answer 50 tasks"
    assert log.seq_scans() == []
