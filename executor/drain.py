"""Run ready tasks in this process: for tests, notebooks and scripts.

`drain` goes through the same SQL claim / complete / fail path as the
supervisor, one task at a time, answering each at once so that dependent
steps become ready within the same call. Time limits are soft here (see
executor.execute_with_timeout): a handler stuck in C code cannot be stopped
without the supervisor's separate processes.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import psycopg

from executor.executor import execute
from executor.result import Err, Ok
from pgflow import Client, Flow, FlowDefinitionError, worker_api
from pgflow.task import ClaimedTask

CLAIM_BATCH = 16
# An answer deferred because another transaction holds its run is sent again
# every few milliseconds, for up to this long.
DEFERRED_RETRY_SECONDS = 0.005
DEFERRED_WAIT_SECONDS = 30.0
# Longest single sleep while waiting for a retry; the loop re-asks Postgres after it.
MAX_RETRY_SLEEP_SECONDS = 5.0


def drain(
    client: Client,
    *flows: Flow,
    max_tasks: int | None = None,
    wait_for_retries: bool = False,
) -> int:
    """Claim and run ready tasks of `flows` until none is ready; return how many ran.

    With wait_for_retries=True, tasks scheduled for later (retry backoff,
    start_delay) are waited for too, so drain returns only when no queued task
    of these flows is left. `max_tasks` stops after that many tasks.
    The flows must be registered (`client.register(flow)`).
    """
    by_slug = _index(flows)
    conn = client.connection()
    worker_id = uuid.uuid4()
    worker_api.register_worker(
        conn, worker_id, socket.gethostname(), os.getpid(), list(by_slug)
    )
    ran = 0
    try:
        while max_tasks is None or ran < max_tasks:
            limit = CLAIM_BATCH if max_tasks is None else min(CLAIM_BATCH, max_tasks - ran)
            tasks = worker_api.claim(conn, worker_id, list(by_slug), limit)
            if not tasks:
                if wait_for_retries and _sleep_until_next_task(conn, list(by_slug)):
                    continue
                break
            for task in tasks:
                result = execute(by_slug[task.flow_slug], task, conn, timeout=task.timeout_ms)
                _answer(conn, task, result)
                ran += 1
    finally:
        worker_api.stop_worker(conn, worker_id)
    return ran


def _answer(conn: psycopg.Connection, task: ClaimedTask, result: Ok[Any] | Err) -> None:
    """Write the answer; while another transaction holds the task's run
    (a supervisor answering a sibling task), try again shortly."""
    for _ in range(int(DEFERRED_WAIT_SECONDS / DEFERRED_RETRY_SECONDS)):
        match result:
            case Ok(output):
                answered = worker_api.complete(conn, [(task.task_id, task.token, output)])
            case Err(message):
                # Type and traceback are kept with the attempt, as the supervisor keeps them.
                details = {"type": result.error_type, "traceback": result.traceback}
                answered = worker_api.fail(conn, [(task.task_id, task.token, message,
                                                   {k: v for k, v in details.items() if v})])
        if task.task_id not in answered.deferred:
            return
        time.sleep(DEFERRED_RETRY_SECONDS)
    raise TimeoutError(f"Run {task.run_id}: its row stayed locked by another transaction for "
                       f"{DEFERRED_WAIT_SECONDS:g}s; the answer of task {task.task_id} was not "
                       "written (its lease will expire and the task run again)")


def _index(flows: tuple[Flow, ...]) -> dict[str, Flow]:
    if not flows:
        raise FlowDefinitionError("drain() needs at least one Flow to run tasks for")
    by_slug: dict[str, Flow] = {}
    for flow in flows:
        if not isinstance(flow, Flow):
            raise FlowDefinitionError(f"drain() takes Flow objects, got {flow!r}")
        by_slug[flow.slug] = flow
    return by_slug


def _sleep_until_next_task(conn: psycopg.Connection, flows: list[str]) -> bool:
    """Sleep until the next queued task is due; False when there is none."""
    wait = worker_api.seconds_until_next_task(conn, flows)
    if wait is None:
        return False
    time.sleep(min(max(wait, 0.0), MAX_RETRY_SLEEP_SECONDS) + 0.01)
    return True
