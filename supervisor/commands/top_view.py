"""How `pgflow top` shows a snapshot: rich tables on a terminal, one line otherwise."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from supervisor import durations
from supervisor.commands import common
from supervisor.commands.show_run import STATUS_STYLE

# What `top` keeps of each live supervisor's row in pgflow.workers.
SUPERVISOR_KEYS = ("worker_id", "hostname", "pid", "flows", "started_at", "heartbeat_age_s",
                   "executors", "executors_busy", "tasks_buffered", "tasks_held",
                   "attempts_succeeded", "attempts_failed", "attempts_per_second")
RUN_STATUSES = ("started", "completed", "failed", "cancelled")


@dataclass
class Snapshot:
    """One reading of the system (the --json shape)."""

    at: datetime.datetime
    window_s: float
    sample_runs: int
    attempts_per_second: float | None  # summed over live supervisors that report it
    runs: dict[str, int]  # started within the window, by status
    runs_finished_last_minute: int
    queue: list[dict[str, Any]]  # per flow: ready, delayed, running, oldest_ready_s
    slowest_steps: list[dict[str, Any]]
    failing_steps: list[dict[str, Any]]
    supervisors: list[dict[str, Any]] = field(default_factory=list)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _executors(supervisors: list[dict[str, Any]]) -> tuple[int, int]:
    busy = sum(s["executors_busy"] or 0 for s in supervisors)
    return busy, sum(s["executors"] or 0 for s in supervisors)


def _queue_totals(queue: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ready": sum(q["ready"] for q in queue),
        "delayed": sum(q["delayed"] for q in queue),
        "running": sum(q["running"] for q in queue),
        "oldest_ready_s": max((q["oldest_ready_s"] for q in queue if q["ready"]), default=0.0),
    }


def _runs_text(snap: Snapshot) -> Text:
    window = durations.format_seconds(snap.window_s)
    text = Text.assemble(("runs ", "bold"), f"(started in the last {window}): ")
    parts = [(status, snap.runs.get(status, 0)) for status in RUN_STATUSES]
    for i, (status, n) in enumerate(parts):
        text.append(f"{n:,} {status}", style=STATUS_STYLE.get(status, "") if n else "dim")
        if i < len(parts) - 1:
            text.append("  ")
    text.append(f"; {snap.runs_finished_last_minute:,} finished/min")
    return text


def render(snap: Snapshot) -> RenderableType:
    busy, total = _executors(snap.supervisors)
    q = _queue_totals(snap.queue)
    header = Text.assemble(
        ("pgflow top", "bold"), f"  {common.when(snap.at)}  (Ctrl-C to quit)\n",
        ("throughput ", "bold"),
        f"{_rate(snap.attempts_per_second)} attempts/s from {len(snap.supervisors)} "
        f"supervisor{'s' if len(snap.supervisors) != 1 else ''}, {busy}/{total} executors busy\n",
        ("queue ", "bold"),
        f"{q['ready']:,} ready (oldest waited {common.seconds(q['oldest_ready_s'])}), "
        f"{q['delayed']:,} delayed, {q['running']:,} held by supervisors\n")
    header.append_text(_runs_text(snap))
    parts: list[RenderableType] = [header]

    sample = f"(tasks of the latest {snap.sample_runs:,} runs of the window)"
    slow = _table(("flow", "step", "done", "p50", "p95", "max"))
    timing = f"(claim to completion of each task's last attempt; {sample[1:]}"
    for s in snap.slowest_steps:
        slow.add_row(s["flow_slug"], s["step_slug"], f"{s['completed']:,}",
                     common.seconds(s["p50_s"]), common.seconds(s["p95_s"]),
                     common.seconds(s["max_s"]))
    failing = _table(("flow", "step", "failed attempts", "failed for good"))
    for s in snap.failing_steps:
        failing.add_row(s["flow_slug"], s["step_slug"], f"{s['failed_attempts']:,}",
                        Text(f"{s['failed_tasks']:,}", style="red" if s["failed_tasks"] else ""))
    parts += [_heading("slowest steps", timing),
              slow if snap.slowest_steps else Text("no step finished", style="dim"),
              _heading("most failing steps", sample),
              failing if snap.failing_steps else Text("no failed attempts", style="dim")]

    sups = _table(("host", "pid", "flows", "executors", "buffered", "held", "attempts/s",
                   "succeeded", "failed", "heartbeat"))
    for s in snap.supervisors:
        sups.add_row(s["hostname"], str(s["pid"]), ", ".join(s["flows"]),
                     "-" if s["executors"] is None else f"{s['executors_busy']}/{s['executors']} busy",
                     _count(s["tasks_buffered"]), str(s["tasks_held"]),
                     _rate(s["attempts_per_second"]), _count(s["attempts_succeeded"]),
                     _count(s["attempts_failed"]), common.ago(s["heartbeat_age_s"]))
    parts += [_heading("live supervisors", "(and what they reported with their last heartbeat)"),
              sups if snap.supervisors else Text("no live supervisor", style="yellow")]
    return Group(*parts)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _heading(title: str, note: str) -> Text:
    return Text.assemble("\n", (title, "bold"), " ", (note, "dim"))


def _table(columns: tuple[str, ...]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, justify="left" if column in ("flow", "step", "host", "flows")
                         else "right")
    return table


def line(snap: Snapshot) -> str:
    """One line per refresh when stdout is not a terminal."""
    busy, total = _executors(snap.supervisors)
    q = _queue_totals(snap.queue)
    runs = " ".join(f"{status} {snap.runs.get(status, 0)}" for status in RUN_STATUSES)
    window = durations.format_seconds(snap.window_s)
    text = (f"{snap.at.astimezone().strftime('%H:%M:%S')} attempts/s "
            f"{_rate(snap.attempts_per_second)} | runs {window}: {runs} | queue "
            f"ready {q['ready']} delayed {q['delayed']} held {q['running']} | supervisors "
            f"{len(snap.supervisors)}, executors {busy}/{total} busy")
    if snap.slowest_steps:
        s = snap.slowest_steps[0]
        text += f" | slowest {s['flow_slug']}/{s['step_slug']} p95 {common.seconds(s['p95_s'])}"
    if snap.failing_steps:
        s = snap.failing_steps[0]
        text += f" | most failing {s['flow_slug']}/{s['step_slug']} {s['failed_attempts']}"
    return text
