"""The engine's statements as the supervisor sends them: the text of
pgflow/sql/worker/*.sql, its parameters as text, and a parser for its rows.
Each function returns a `Statement` whose callback gets typed results.

Answers travel as one JSON document per batch, built here from the outputs'
bytes as the executors sent them.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pgflow import queries
from supervisor.pgconn import ConnectionLost, Rows, Statement, StatementError
from supervisor.schedules import TickResult
from supervisor.tasks import CLAIM_COLUMNS, HeldTask, from_claim_row

Failure = StatementError | ConnectionLost


def _statement(name: str, params: Sequence[str | bytes | None],
               on_rows: Callable[[Rows], None], on_failure: Callable[[Failure], None]) -> Statement:
    def on_result(result: Rows | Failure) -> None:
        if isinstance(result, Rows):
            on_rows(result)
        else:
            on_failure(result)

    return Statement(queries.worker(name).encode(), params, on_result)


def _text_array(values: Iterable[str]) -> str:
    """A text[] literal; slugs match ^[a-zA-Z_][a-zA-Z0-9_]*$, so need no quoting."""
    return "{" + ",".join(values) + "}"


def claim(worker_id: uuid.UUID, flows: Sequence[str], limit: int, lease_grace: float,
          on_claimed: Callable[[list[HeldTask]], None],
          on_failure: Callable[[Failure], None]) -> Statement:
    def parse(rows: Rows) -> None:
        assert rows.names == CLAIM_COLUMNS, rows.names
        now = time.monotonic()
        on_claimed([from_claim_row(row, now) for row in rows.values])

    return _statement("claim", (str(worker_id), _text_array(flows), str(limit), repr(lease_grace)),
                      parse, on_failure)


def next_due(flows: Sequence[str], on_seconds: Callable[[float | None], None],
             on_failure: Callable[[Failure], None]) -> Statement:
    def parse(rows: Rows) -> None:
        value = rows.values[0][0] if rows.values else None
        on_seconds(None if value is None else float(value))

    return _statement("next_due", (_text_array(flows),), parse, on_failure)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the engine did with one answer."""

    task_id: int
    deferred: bool = False  # its run was locked elsewhere: send it again
    retry: bool = False  # a failed attempt that will be retried
    run_status: str | None = None  # the run finished because of this batch
    run_seconds: float | None = None


def _outcomes(rows: Rows) -> list[Outcome]:
    names = rows.names
    out = []
    for row in rows.values:
        values = dict(zip(names, row, strict=True))
        task_id = values["task_id"]
        assert task_id is not None
        seconds = values.get("run_seconds")
        status = values.get("run_status")
        out.append(Outcome(int(task_id), values["deferred"] == b"t", values.get("retry") == b"t",
                           status.decode() if status else None,
                           float(seconds) if seconds else None))
    return out


def complete(outputs: Sequence[tuple[int, int, bytes]],
             on_outcomes: Callable[[list[Outcome]], None],
             on_failure: Callable[[Failure], None]) -> Statement:
    """(task_id, token, output JSON bytes) -> one complete_tasks call."""
    body = b",".join(b"[%d,%d,%s]" % (task_id, token, output) for task_id, token, output in outputs)
    return _statement("complete", (b"[" + body + b"]",), lambda rows: on_outcomes(_outcomes(rows)),
                      on_failure)


def fail(failures: Sequence[tuple[int, int, str, dict[str, Any] | None]],
         on_outcomes: Callable[[list[Outcome]], None],
         on_failure: Callable[[Failure], None]) -> Statement:
    """(task_id, token, error message, details) -> one fail_tasks call."""
    return _statement("fail", (orjson.dumps(failures),), lambda rows: on_outcomes(_outcomes(rows)),
                      on_failure)


def release(tasks: Sequence[tuple[int, int]], on_released: Callable[[set[int]], None],
            on_failure: Callable[[Failure], None]) -> Statement:
    return _statement("release", (orjson.dumps(tasks),),
                      lambda rows: on_released({int(r[0]) for r in rows.values if r[0]}),
                      on_failure)


def heartbeat(worker_id: uuid.UUID, tasks: Sequence[tuple[int, int]], lease_grace: float,
              on_lost: Callable[[set[int]], None],
              on_failure: Callable[[Failure], None]) -> Statement:
    return _statement("heartbeat", (str(worker_id), orjson.dumps(tasks), repr(lease_grace)),
                      lambda rows: on_lost({int(r[0]) for r in rows.values if r[0]}), on_failure)


def requeue_expired(limit: int, on_requeued: Callable[[int], None],
                    on_failure: Callable[[Failure], None]) -> Statement:
    return _statement("requeue_expired", (str(limit),),
                      lambda rows: on_requeued(int(rows.values[0][0] or 0)), on_failure)


def register_worker(worker_id: uuid.UUID, hostname: str, pid: int, flows: Sequence[str],
                    on_done: Callable[[], None], on_failure: Callable[[Failure], None]) -> Statement:
    return _statement("register_worker", (str(worker_id), hostname, str(pid), _text_array(flows)),
                      lambda rows: on_done(), on_failure)


def stop_worker(worker_id: uuid.UUID, on_done: Callable[[], None],
                on_failure: Callable[[Failure], None]) -> Statement:
    return _statement("stop_worker", (str(worker_id),), lambda rows: on_done(), on_failure)


def queue_stats(flows: Sequence[str],
                on_stats: Callable[[dict[str, tuple[int, float]]], None],
                on_failure: Callable[[Failure], None]) -> Statement:
    def parse(rows: Rows) -> None:
        on_stats({flow.decode(): (int(depth), float(age))
                  for flow, depth, age in rows.values if flow and depth and age})

    return _statement("queue_stats", (_text_array(flows),), parse, on_failure)


def notification_queue_usage(on_usage: Callable[[float], None],
                             on_failure: Callable[[Failure], None]) -> Statement:
    return _statement("notification_queue_usage", (),
                      lambda rows: on_usage(float(rows.values[0][0] or 0)), on_failure)


def retention_tick(worker_id: uuid.UUID, older_than: float, limit: int, tick: float,
                   on_result: Callable[[bool, int, int], None],
                   on_failure: Callable[[Failure], None]) -> Statement:
    """Prune a batch if this worker holds the tick: on_result(ran, runs, tasks)."""
    def parse(rows: Rows) -> None:
        ran, runs, tasks = rows.values[0]
        on_result(ran == b"t", int(runs or 0), int(tasks or 0))

    return _statement("retention_tick", (str(worker_id), repr(older_than), str(limit), repr(tick)),
                      parse, on_failure)


def report_worker(worker_id: uuid.UUID, executors: int, busy: int, buffered: int,
                  succeeded: int, failed: int, on_failure: Callable[[Failure], None]) -> Statement:
    return _statement("report_worker", (str(worker_id), str(executors), str(busy), str(buffered),
                                        str(succeeded), str(failed)),
                      lambda rows: None, on_failure)


def start_due_ticks(items: Sequence[dict[str, Any]],
                    on_results: Callable[[list[TickResult]], None],
                    on_failure: Callable[[Failure], None]) -> Statement:
    """Due schedule ticks (supervisor.schedules.Scheduler.due) -> runs started once each."""
    def parse(rows: Rows) -> None:
        results = []
        for flow, last_tick_at, started, error in rows.values:
            assert flow is not None
            when = (None if last_tick_at is None else
                    datetime.datetime.fromtimestamp(float(last_tick_at), datetime.UTC))
            results.append(TickResult(flow.decode(), when, int(started or 0),
                                      error.decode() if error else None))
        on_results(results)

    return _statement("start_due_ticks", (orjson.dumps(items),), parse, on_failure)
