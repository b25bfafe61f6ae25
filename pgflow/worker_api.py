"""The SQL calls a worker makes: claim, complete, fail, release, heartbeat,
requeue expired leases. Thin wrappers over the pgflow.* functions, shared by
the supervisor and by in-process draining. Each takes a batch.

Answers are fenced by the claim's token: (task_id, token, ...). A batch that
Postgres refuses for what one row holds (an output too large for jsonb, a
value out of range) is written again row by row, so one bad answer fails its
own task with a readable error and never the answers of other runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgflow import queries
from pgflow.task import ClaimedTask

DEFAULT_LEASE_GRACE = 30.0

_CLAIM = (
    "select task_id, token, run_id, flow_slug, step_slug, task_index, attempt, timeout_ms, "
    "input, input_is_flow_input, extract(epoch from now() - visible_at)::float8 "
    "from pgflow.claim_tasks(%s, %s::text[], %s::int, %s::numeric)"
)
_NEXT_DUE = "select extract(epoch from pgflow.next_visible_at(%s::text[]) - now())"


def register_worker(
    conn: psycopg.Connection, worker_id: uuid.UUID, hostname: str, pid: int, flows: Sequence[str]
) -> None:
    conn.execute(
        "select pgflow.register_worker(%s, %s, %s::int, %s::text[])", (worker_id, hostname, pid, list(flows))
    )


def claim(
    conn: psycopg.Connection,
    worker_id: uuid.UUID,
    flows: Sequence[str],
    limit: int,
    lease_grace: float = DEFAULT_LEASE_GRACE,
) -> list[ClaimedTask]:
    """Claim up to `limit` visible tasks of `flows`, oldest first."""
    rows = conn.execute(_CLAIM, (worker_id, list(flows), limit, lease_grace)).fetchall()
    return [ClaimedTask(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Accepted:
    """An answer the engine accepted. run_status / run_seconds are set on one
    task per run that finished because of this batch."""

    task_id: int
    retry: bool = False
    run_status: str | None = None
    run_seconds: float | None = None
    # Set when a completion was refused for its output and recorded as a
    # failed attempt with this error instead.
    error: str | None = None


def complete(
    conn: psycopg.Connection, answers: Iterable[tuple[int, int, Any]]
) -> dict[int, Accepted]:
    """Record outputs: (task_id, token, output). Returns the accepted answers
    by task id; the rest were stale and changed nothing. An output of type
    orjson.Fragment is sent as the JSON it already holds."""
    rows = list(answers)
    if not rows:
        return {}
    try:
        return _complete(conn, rows)
    except psycopg.Error as exc:
        if not is_row_error(exc):
            raise
    accepted: dict[int, Accepted] = {}
    for row in rows:  # one row at a time: only the bad ones fail
        try:
            accepted.update(_complete(conn, [row]))
        except psycopg.Error as exc:
            if not is_row_error(exc):
                raise
            accepted.update(_fail_unstorable(conn, row, exc))
    return accepted


def _complete(conn: psycopg.Connection, rows: list[tuple[int, int, Any]]) -> dict[int, Accepted]:
    ids, tokens, outputs = [], [], []
    for task_id, token, output in rows:
        ids.append(task_id)
        tokens.append(token)
        outputs.append(Jsonb(output))
    result = conn.execute(
        "select task_id, run_status, run_seconds "
        "from pgflow.complete_tasks(%s::bigint[], %s::bigint[], %s::jsonb[])",
        (ids, tokens, outputs),
    ).fetchall()
    return {row[0]: Accepted(row[0], False, row[1], row[2]) for row in result}


def _fail_unstorable(
    conn: psycopg.Connection, row: tuple[int, int, Any], exc: psycopg.Error
) -> dict[int, Accepted]:
    """Fail the attempt whose output Postgres refused, saying why."""
    task_id, token, _ = row
    reason = (exc.diag.message_primary or str(exc)).strip()
    error = f"Output could not be stored: {reason}"
    return {task_id: replace(a, error=error) for task_id, a in fail(conn, [(task_id, token, error)]).items()}


def is_row_error(exc: psycopg.Error) -> bool:
    """An error caused by the data of a row (SQLSTATE class 22 data exception
    or 54 program limit exceeded), not by the connection or the statement:
    retrying without that row succeeds. psycopg reports class 54 as an
    OperationalError, so this must be asked before treating one as a lost
    connection."""
    return (exc.sqlstate or "")[:2] in {"22", "54"}


def fail(conn: psycopg.Connection, answers: Iterable[tuple[int, int, str]]) -> dict[int, Accepted]:
    """Record failed attempts: (task_id, token, error). Returns the accepted
    answers by task id, with whether each will be retried."""
    columns = _columns(answers)
    if not columns:
        return {}
    rows = conn.execute(
        "select task_id, retry, run_status, run_seconds "
        "from pgflow.fail_tasks(%s::bigint[], %s::bigint[], %s::text[])",
        columns,
    ).fetchall()
    return {row[0]: Accepted(*row) for row in rows}


def release(conn: psycopg.Connection, tasks: Iterable[tuple[int, int]]) -> set[int]:
    """Give tasks back without charging an attempt: (task_id, token)."""
    columns = _columns(tasks)
    if not columns:
        return set()
    rows = conn.execute(
        "select * from pgflow.release_tasks(%s::bigint[], %s::bigint[])", columns
    ).fetchall()
    return {row[0] for row in rows}


def _columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows to one list per column (the engine's functions take parallel arrays)."""
    return [list(column) for column in zip(*rows, strict=True)]


def heartbeat(
    conn: psycopg.Connection,
    worker_id: uuid.UUID,
    tasks: Sequence[tuple[int, int]],
    lease_grace: float = DEFAULT_LEASE_GRACE,
) -> set[int]:
    """Mark the worker alive and extend the leases of the tasks it holds:
    (task_id, token). Returns the ids of those it no longer holds (requeued
    after their lease expired, cancelled, or answered by another claim)."""
    ids = [task_id for task_id, _ in tasks]
    tokens = [token for _, token in tasks]
    rows = conn.execute(
        "select * from pgflow.heartbeat(%s, %s::bigint[], %s::bigint[], %s::numeric)",
        (worker_id, ids, tokens, lease_grace),
    ).fetchall()
    return {row[0] for row in rows}


def requeue_expired(conn: psycopg.Connection, limit: int = 1000) -> int:
    row = conn.execute("select pgflow.requeue_expired(%s::int)", (limit,)).fetchone()
    return int(row[0]) if row else 0


def seconds_until_next_task(conn: psycopg.Connection, flows: Sequence[str]) -> float | None:
    """Seconds until the earliest queued task of `flows` is due (<= 0: due now),
    measured on the database clock; None when nothing is queued."""
    row = conn.execute(_NEXT_DUE, (list(flows),)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def claim_with_next_due(
    conn: psycopg.Connection,
    worker_id: uuid.UUID,
    flows: Sequence[str],
    limit: int,
    lease_grace: float = DEFAULT_LEASE_GRACE,
) -> tuple[list[ClaimedTask], float | None]:
    """Claim, then ask when the next queued task is due, in one round trip
    (pipeline). The second answer is <= 0 when more tasks are ready now.

    The claim commits without waiting for its WAL flush: a claim lost in a
    crash only leaves the task queued again, and the attempt fence then
    rejects the lost attempt's answer (at-least-once execution, as always).
    This saves one fsync on the path from start_flow to the handler.
    """
    with conn.pipeline(), conn.transaction():
        conn.execute("set local synchronous_commit = off")
        claimed = conn.execute(_CLAIM, (worker_id, list(flows), limit, lease_grace))
        due = conn.execute(_NEXT_DUE, (list(flows),))
    tasks = [ClaimedTask(*row) for row in claimed.fetchall()]
    row = due.fetchone()
    return tasks, None if row is None or row[0] is None else float(row[0])


def queue_stats(conn: psycopg.Connection, flows: Sequence[str]) -> dict[str, tuple[int, float]]:
    """{flow: (ready tasks, age in seconds of the oldest)} for flows with ready tasks."""
    rows = conn.execute(queries.load("queue_stats"), {"flows": list(flows)}).fetchall()
    return {flow: (depth, age) for flow, depth, age in rows}


def notification_queue_usage(conn: psycopg.Connection) -> float:
    """Share of Postgres' NOTIFY queue in use (0 to 1)."""
    row = conn.execute("select pg_notification_queue_usage()").fetchone()
    return float(row[0]) if row else 0.0


def server_warnings(conn: psycopg.Connection) -> list[str]:
    """Server settings that will hurt the engine, one sentence each."""
    return [row[0] for row in conn.execute(queries.load("server_warnings")).fetchall()]
