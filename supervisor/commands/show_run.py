"""`pgflow run RUN_ID`: a run's steps, tasks, attempts, errors and timings."""

from __future__ import annotations

import argparse
import datetime
import textwrap
from typing import Any

import psycopg.rows
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pgflow import Client, Run, queries
from supervisor.commands import common

NAME = "run"
HELP = "show one run: steps, tasks, attempts, the error of each failed attempt, timings"

STATUS_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow", "started": "cyan",
                "skipped": "magenta"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID")
    common.add_database_option(parser)
    common.add_json_option(parser)


def read_tasks(client: Client, run: Run) -> list[dict[str, Any]]:
    with client.connection().cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(queries.load("run_tasks"), {"run_id": run.run_id}).fetchall()


def _finished_at(obj: Any) -> Any:
    return obj.completed_at or obj.failed_at or getattr(obj, "cancelled_at", None)


def _seconds_between(start: Any, end: Any) -> float | None:
    return (end - start).total_seconds() if start and end else None


def document(run: Run, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The --json shape of a run."""
    steps = []
    for slug, step in run.steps.items():
        steps.append({
            "step_slug": slug, "status": step.status, "attempts": step.attempts,
            "task_count": step.task_count, "output": step.output, "error": step.error,
            "started_at": step.started_at, "completed_at": step.completed_at,
            "failed_at": step.failed_at, "skip_reason": step.skip_reason,
            "skipped_at": step.skipped_at,
            "duration_s": _seconds_between(step.started_at, step.completed_at or step.failed_at),
            "tasks": [{
                "task_index": t["task_index"], "status": t["status"], "attempt": t["attempt"],
                "duration_s": t["duration_s"], "errors": t["errors"],
                "worker": f"{t['hostname']} pid {t['pid']}" if t["hostname"] else None,
            } for t in tasks if t["step_slug"] == slug],
        })
    return {
        "run_id": run.run_id, "flow_slug": run.flow_slug, "status": run.status,
        "input": run.input, "output": run.output, "error": run.error,
        "failed_step": run.failed_step, "key": run.key, "tags": run.tags,
        "started_at": run.started_at,
        "completed_at": run.completed_at, "failed_at": run.failed_at,
        "cancelled_at": run.cancelled_at, "retry_count": run.retry_count,
        "retried_at": run.retried_at,
        "duration_s": _seconds_between(run.started_at, _finished_at(run)), "steps": steps,
    }


def attempt_line(where: str, entry: dict[str, Any]) -> str:
    """"step attempt 2 at <local time> (before retry 1): Type: message"."""
    message = str(entry.get("error") or "")
    kind = entry.get("type")
    if kind and not message.startswith(str(kind)):
        message = f"{kind}: {message}"
    before = f" (before retry {entry['retry'] + 1})" if entry.get("retry") is not None else ""
    return f"{where} attempt {entry['attempt']} at {_local(entry.get('at'))}{before}: {message}"


def _local(at: Any) -> str:
    try:
        return common.when(datetime.datetime.fromisoformat(str(at)))
    except ValueError:
        return str(at)


def steps_table(run: Run) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("step", "status", "tasks", "attempts", "time"):
        table.add_column(column, justify="left" if column in ("step", "status") else "right")
    for slug, step in run.steps.items():
        took = _seconds_between(step.started_at, step.completed_at or step.failed_at)
        status = step.status + (f" ({step.skip_reason})" if step.skip_reason else "")
        table.add_row(slug, Text(status, style=STATUS_STYLE.get(step.status, "")),
                      "-" if step.task_count is None else str(step.task_count),
                      str(step.attempts), common.seconds(took))
    return table


def render(console: Console, run: Run, tasks: list[dict[str, Any]]) -> None:
    took = _seconds_between(run.started_at, _finished_at(run))
    status = Text(run.status, style=STATUS_STYLE.get(run.status, ""))
    console.print(Text.assemble(f"run {run.run_id}  flow {run.flow_slug}  ", status,
                                f"  started {common.when(run.started_at)}",
                                f"  took {common.seconds(took)}" if took is not None else ""))
    if run.retry_count:
        console.print(f"retried {run.retry_count} time{'s' if run.retry_count > 1 else ''}, "
                      f"last at {common.when(run.retried_at)}", highlight=False)
    console.print(f"input: {common.compact_json(run.input)}", highlight=False, markup=False)
    if run.key or run.tags:
        labels = ([f"key {run.key}"] if run.key else []) + [
            f"{k}={v}" for k, v in sorted(run.tags.items())]
        console.print(f"tags: {', '.join(labels)}", highlight=False, markup=False)
    console.print(steps_table(run))
    failures = [(t, e) for t in tasks for e in t["errors"]]
    if failures:
        console.print("failed attempts:", style="bold")
        shown: dict[str, str] = {}
        for task, entry in failures:
            where = task["step_slug"] + (f"[{task['task_index']}]" if task["task_index"] else "")
            console.print(f"  {attempt_line(where, entry)}", highlight=False, markup=False)
            trace = (entry.get("traceback") or "").rstrip()
            if not trace:
                continue
            if trace in shown:
                console.print(f"    (same traceback as {shown[trace]})", style="dim",
                              highlight=False, markup=False)
                continue
            shown[trace] = f"{where} attempt {entry['attempt']}"
            console.print(textwrap.indent(trace, "    "), style="dim", highlight=False,
                          markup=False)
    if run.status == "completed":
        console.print(f"output: {common.compact_json(run.output, 2000)}", highlight=False,
                      markup=False)
    elif run.error:
        step = f" (step {run.failed_step})" if run.failed_step else ""
        console.print(f"error{step}: {run.error}", highlight=False, markup=False)


def run(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        found = client.get_run(args.run_id)
        tasks = read_tasks(client, found)
    if args.json:
        common.print_json(document(found, tasks))
    else:
        render(common.console(), found, tasks)
    return 0
