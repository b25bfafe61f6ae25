"""The worker protocol over a plain (blocking) psycopg connection: claim,
complete, fail, release, heartbeat, requeue expired leases. `executor.drain`
and the tests use it; the supervisor sends the same statements
(pgflow/sql/worker/*.sql) through its own non-blocking connection.

Answers are fenced by the claim's token: (task_id, token, ...). A batch that
Postgres refuses for what one row holds (an output jsonb cannot store, a
value out of range) is written again row by row, so one bad answer fails its
own task with a readable error and never the answers of other runs. An
answer whose run another transaction holds locked is deferred: it comes back
in `Answered.deferred` to be sent again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from pgflow import jsondata, queries
from pgflow.task import ClaimedTask

DEFAULT_LEASE_GRACE = 30.0


def _rows(conn: psycopg.Connection, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with psycopg.RawCursor(conn) as cur:
        cur.execute(queries.worker(statement), params)
        return cur.fetchall() if cur.description else []


def register_worker(
    conn: psycopg.Connection, worker_id: uuid.UUID, hostname: str, pid: int, flows: Sequence[str]
) -> None:
    _rows(conn, "register_worker", (worker_id, hostname, pid, list(flows)))


def stop_worker(conn: psycopg.Connection, worker_id: uuid.UUID) -> None:
    _rows(conn, "stop_worker", (worker_id,))


def claim(
    conn: psycopg.Connection,
    worker_id: uuid.UUID,
    flows: Sequence[str],
    limit: int,
    lease_grace: float = DEFAULT_LEASE_GRACE,
) -> list[ClaimedTask]:
    """Claim up to `limit` visible tasks of `flows`, oldest first."""
    rows = _rows(conn, "claim", (worker_id, list(flows), limit, lease_grace))
    tasks, undecodable = [], []
    for task_id, token, run_id, flow, step, index, attempt, timeout_ms, input, is_flow_input, \
            waited in rows:
        try:
            value = orjson.loads(input)
        except orjson.JSONDecodeError as exc:
            # JSON Postgres holds but Python cannot (from SQL: nesting past
            # 1024 levels, a number beyond a double): fail this task, not the claim.
            where = f"Flow {flow!r}, step {step!r}, run {run_id}"
            undecodable.append((task_id, token, jsondata.undecodable_input(where, str(exc)),
                                {"type": "InputNotDecodable"}))
            continue
        tasks.append(ClaimedTask(task_id, token, run_id, flow, step, index, attempt, timeout_ms,
                                 value, is_flow_input, waited))
    fail(conn, undecodable)
    return tasks


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


@dataclass
class Answered:
    """What the engine did with a batch of answers: the accepted ones by task
    id, and those deferred because another transaction held their run. The
    rest were stale (another claim holds the task, or it is finished)."""

    accepted: dict[int, Accepted] = field(default_factory=dict)
    deferred: set[int] = field(default_factory=set)

    def update(self, other: Answered) -> None:
        self.accepted.update(other.accepted)
        self.deferred |= other.deferred


def complete(conn: psycopg.Connection, answers: Iterable[tuple[int, int, Any]]) -> Answered:
    """Record outputs: (task_id, token, output). An output of type
    orjson.Fragment is sent as the JSON it already holds."""
    rows = list(answers)
    if not rows:
        return Answered()
    try:
        return _complete(conn, rows)
    except psycopg.Error as exc:
        if not is_row_error(exc):
            raise
    answered = Answered()
    for row in rows:  # one row at a time: only the bad ones fail
        try:
            answered.update(_complete(conn, [row]))
        except psycopg.Error as exc:
            if not is_row_error(exc):
                raise
            answered.update(_fail_unstorable(conn, row, exc))
    return answered


def _complete(conn: psycopg.Connection, rows: list[tuple[int, int, Any]]) -> Answered:
    result = _rows(conn, "complete", (orjson.dumps(rows).decode(),))
    answered = Answered()
    for task_id, deferred, run_status, run_seconds in result:
        if deferred:
            answered.deferred.add(task_id)
        else:
            answered.accepted[task_id] = Accepted(task_id, False, run_status, run_seconds)
    return answered


def _fail_unstorable(
    conn: psycopg.Connection, row: tuple[int, int, Any], exc: psycopg.Error
) -> Answered:
    """Fail the attempt whose output Postgres refused, saying why."""
    task_id, token, _ = row
    reason = (exc.diag.message_primary or str(exc)).strip()
    error = f"Output could not be stored: {reason}"
    answered = fail(conn, [(task_id, token, error, {"type": "OutputNotStorable"})])
    answered.accepted = {
        i: Accepted(a.task_id, a.retry, a.run_status, a.run_seconds, error)
        for i, a in answered.accepted.items()
    }
    return answered


def is_row_error(exc: psycopg.Error) -> bool:
    """An error caused by the data of a row (SQLSTATE class 22 data exception
    or 54 program limit exceeded), not by the connection or the statement:
    retrying without that row succeeds. psycopg reports class 54 as an
    OperationalError, so this must be asked before treating one as a lost
    connection."""
    return (exc.sqlstate or "")[:2] in {"22", "54"}


def fail(
    conn: psycopg.Connection,
    answers: Iterable[tuple[int, int, str] | tuple[int, int, str, dict[str, Any] | None]],
) -> Answered:
    """Record failed attempts: (task_id, token, error[, details]); details
    (such as {"type": ..., "traceback": ...}) are kept with the attempt."""
    rows = list(answers)
    if not rows:
        return Answered()
    result = _rows(conn, "fail", (orjson.dumps(rows).decode(),))
    answered = Answered()
    for task_id, retry, deferred, run_status, run_seconds in result:
        if deferred:
            answered.deferred.add(task_id)
        else:
            answered.accepted[task_id] = Accepted(task_id, retry, run_status, run_seconds)
    return answered


def release(conn: psycopg.Connection, tasks: Iterable[tuple[int, int]]) -> set[int]:
    """Give tasks back without charging an attempt: (task_id, token)."""
    rows = list(tasks)
    if not rows:
        return set()
    return {row[0] for row in _rows(conn, "release", (orjson.dumps(rows).decode(),))}


def heartbeat(
    conn: psycopg.Connection,
    worker_id: uuid.UUID,
    tasks: Sequence[tuple[int, int]],
    lease_grace: float = DEFAULT_LEASE_GRACE,
) -> set[int]:
    """Mark the worker alive and extend the leases of the tasks it holds:
    (task_id, token). Returns the ids of those it no longer holds (requeued
    after their lease expired, cancelled, or answered by another claim)."""
    held = orjson.dumps([list(t) for t in tasks]).decode()
    return {row[0] for row in _rows(conn, "heartbeat", (worker_id, held, lease_grace))}


def requeue_expired(conn: psycopg.Connection, limit: int = 1000) -> int:
    rows = _rows(conn, "requeue_expired", (limit,))
    return int(rows[0][0]) if rows else 0


def seconds_until_next_task(conn: psycopg.Connection, flows: Sequence[str]) -> float | None:
    """Seconds until the earliest queued task of `flows` is due (<= 0: due now),
    measured on the database clock; None when nothing is queued."""
    rows = _rows(conn, "next_due", (list(flows),))
    return None if not rows or rows[0][0] is None else float(rows[0][0])


def queue_stats(conn: psycopg.Connection, flows: Sequence[str]) -> dict[str, tuple[int, float]]:
    """{flow: (ready tasks, age in seconds of the oldest)} for flows with ready tasks."""
    return {flow: (depth, age) for flow, depth, age in _rows(conn, "queue_stats", (list(flows),))}


def notification_queue_usage(conn: psycopg.Connection) -> float:
    """Share of Postgres' NOTIFY queue in use (0 to 1)."""
    rows = _rows(conn, "notification_queue_usage", ())
    return float(rows[0][0]) if rows else 0.0


def server_warnings(conn: psycopg.Connection) -> list[str]:
    """Server settings that will hurt the engine, one sentence each."""
    return [row[0] for row in _rows(conn, "server_warnings", ())]
