"""The histories the chaos soak checks against each other: what the handlers
recorded (files under the record directory, written outside the system
under test) and what Postgres holds at the end."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

TaskKey = tuple[str, str, int]  # (run id, step, task index)


@dataclass
class Invocation:
    """One execution of a handler, from its first record to its last."""

    run: str
    flow: str
    step: str
    index: int
    attempt: int
    pid: int
    starttime: int
    ppid: int
    plan: str
    start: float
    end: float
    outcome: str | None = None  # o(k), r(aise), x (crash), u(nexpected error); None: killed
    error: str | None = None
    grandchild: tuple[int, int] | None = None

    @property
    def task(self) -> TaskKey:
        return (self.run, self.step, self.index)

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Records:
    invocations: list[Invocation] = field(default_factory=list)
    by_task: dict[TaskKey, list[Invocation]] = field(default_factory=lambda: defaultdict(list))
    # Grandchild (pid, start time) -> its last tick (wall clock).
    grandchild_last_tick: dict[tuple[int, int], float] = field(default_factory=dict)
    processes: set[tuple[int, int]] = field(default_factory=set)
    lines: int = 0
    bad_lines: int = 0


def load_records(directory: Path) -> Records:
    records = Records()
    for path in sorted(directory.glob("*.jsonl")):
        current: dict[tuple[int, int], Invocation] = {}
        for raw in path.read_bytes().splitlines():
            records.lines += 1
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                records.bad_lines += 1  # a torn line would be a bug in the recorder
                continue
            _apply(records, current, line)
    for invocation in records.invocations:
        records.by_task[invocation.task].append(invocation)
    return records


def _apply(records: Records, current: dict[tuple[int, int], Invocation], line: dict[str, Any]) -> None:
    process = (line["p"], line["st"])
    event, t = line["e"], line["t"]
    if event == "gk":
        records.grandchild_last_tick[process] = t
        return
    records.processes.add(process)
    if event == "s":
        invocation = Invocation(run=line["r"], flow=line["f"], step=line["s"], index=line["i"],
                                attempt=line["a"], pid=line["p"], starttime=line["st"],
                                ppid=line["pp"], plan=line["b"], start=t, end=t)
        current[process] = invocation
        records.invocations.append(invocation)
        return
    invocation = current.get(process)
    if invocation is None:
        records.bad_lines += 1
        return
    invocation.end = t
    if event in ("o", "r", "x", "u"):
        invocation.outcome = event
        invocation.error = line.get("error")
    elif event == "g":
        invocation.grandchild = (line["child"], line["child_st"])


@dataclass
class Database:
    runs: dict[uuid.UUID, dict[str, Any]]
    tasks: dict[TaskKey, dict[str, Any]]
    step_states: dict[tuple[str, str], dict[str, Any]]
    workers: dict[str, dict[str, Any]]  # worker id -> row
    queue_rows: int
    by_step: dict[tuple[str, str], list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list))


def load_database(dsn: str) -> Database:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        runs = {r["run_id"]: r for r in conn.execute(
            "select run_id, flow_slug, status, input, output, error, failed_step, "
            "extract(epoch from started_at)::float8 as started_at, "
            "extract(epoch from coalesce(completed_at, failed_at, cancelled_at))::float8 "
            "as finished_at from pgflow.runs")}
        tasks = {(str(t["run_id"]), t["step_slug"], t["task_index"]): t for t in conn.execute(
            "select task_id, run_id, flow_slug, step_slug, task_index, status, attempt, errors, "
            "worker_id::text as worker_id, "
            "extract(epoch from visible_at)::float8 as visible_at, "
            "extract(epoch from started_at)::float8 as started_at, "
            "extract(epoch from completed_at)::float8 as completed_at "
            "from pgflow.tasks")}
        steps = {(str(s["run_id"]), s["step_slug"]): s for s in conn.execute(
            "select run_id, step_slug, status, output, task_count, remaining_tasks "
            "from pgflow.step_states")}
        workers = {w["worker_id"]: w for w in conn.execute(
            "select worker_id::text as worker_id, hostname, pid, "
            "extract(epoch from started_at)::float8 as started_at from pgflow.workers")}
        queue_rows = conn.execute("select count(*) as n from pgflow.queue").fetchone()["n"]
    db = Database(runs, tasks, steps, workers, int(queue_rows))
    for (run, step, _), task in tasks.items():
        db.by_step[(run, step)].append(task)
        for entry in task["errors"]:
            entry["at_epoch"] = _epoch(entry.get("at"))
    return db


def _epoch(value: Any) -> float | None:
    """tasks.errors[].at is jsonb text from now(): '2024-05-01T12:00:00.123456+00:00'."""
    from datetime import datetime

    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value).timestamp()
