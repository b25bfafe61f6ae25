"""How the demo shows its batch: a live table on a terminal, plain lines
otherwise, and a summary at the end."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from supervisor.demo.batch import Progress, Timings


class ProgressView:
    """Live progress; on a terminal a table redrawn in place, otherwise a
    plain line whenever something changed (at most every half second)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self._live: Live | None = None
        self._last_line = ""
        self._last_print = 0.0

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            # No auto-refresh thread: the demo forks nothing later, but stays single-threaded anyway.
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, progress: Progress, *, force: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        if self._live is not None:
            self._live.update(_progress_table(progress, elapsed), refresh=True)
            return
        line = _progress_line(progress)
        now = time.monotonic()
        if line != self._last_line and (force or now - self._last_print >= 0.5):
            self.console.print(f"[{elapsed:5.1f}s] {line}", markup=False, highlight=False)
            self._last_line, self._last_print = line, now


def _runs_text(progress: Progress) -> str:
    runs = progress.runs
    parts = [f"{runs.get('completed', 0)}/{progress.total} runs completed"]
    parts += [f"{runs[status]} {status}" for status in ("failed", "cancelled") if runs.get(status)]
    return ", ".join(parts)


def _progress_line(progress: Progress) -> str:
    steps = " ".join(
        f"{s.step_slug} {s.completed}/{s.queued + s.running + s.completed + s.failed}"
        + (f" (retried {s.failed_attempts})" if s.failed_attempts else "")
        for s in progress.steps
    )
    return f"{_runs_text(progress)} | {steps}"


def _progress_table(progress: Progress, elapsed: float) -> Group:
    table = Table(title=None, box=None, header_style="bold")
    for column in ("step", "queued", "running", "done", "failed attempts"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for s in progress.steps:
        table.add_row(s.step_slug, str(s.queued), str(s.running), str(s.completed),
                      Text(str(s.failed_attempts), style="yellow" if s.failed_attempts else ""))
    return Group(Text(f"{_runs_text(progress)}  ({elapsed:.1f}s)", style="bold"), table)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def summary(console: Console, timings: Timings, total: int, metrics_text: str = "") -> None:
    runs = timings.runs
    finished = ", ".join(f"{n} {status}" for status, n in sorted(runs.items())) or "none finished"
    console.print(f"\n{total} runs: {finished}; first start to last finish "
                  f"{_seconds(timings.span_s)}; one run took {_seconds(timings.p50_run_s)} "
                  f"(median), {_seconds(timings.max_run_s)} at most", highlight=False)
    executed = mean_task_seconds(metrics_text)
    table = Table(box=None, header_style="bold")
    for column in ("step", "tasks", "attempts", "failed", "run time", "claimed→done", "max"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for s in timings.steps:
        table.add_row(s.step_slug, str(s.tasks), str(s.attempts),
                      Text(str(s.failed_attempts), style="yellow" if s.failed_attempts else ""),
                      _seconds(executed.get(s.step_slug)), _seconds(s.p50_s), _seconds(s.max_s))
    console.print(table)
    console.print("run time: mean per attempt in an executor (from /metrics); claimed→done: "
                  "median and max of each task's last attempt, including time in the prefetch "
                  "buffer", style="dim", highlight=False)
    for s in timings.steps:
        if s.example_error:
            console.print(f"{s.step_slug}: {s.failed_attempts} failed attempt(s) retried, e.g. "
                          f"{s.example_error}", highlight=False)


def mean_task_seconds(text: str) -> dict[str, float]:
    """Mean of pgflow_task_duration_seconds per step, from Prometheus text."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text) if text else ():
        if family.name != "pgflow_task_duration_seconds":
            continue
        for sample in family.samples:
            step = sample.labels.get("step", "")
            if sample.name.endswith("_sum"):
                sums[step] = sums.get(step, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[step] = counts.get(step, 0.0) + sample.value
    return {step: sums[step] / n for step, n in counts.items() if n and step in sums}


# Counters worth showing from the supervisor's /metrics.
METRICS = {
    "pgflow_tasks_completed": "task attempts succeeded",
    "pgflow_tasks_failed": "failed",
    "pgflow_tasks_timed_out": "timed out",
    "pgflow_tasks_retried": "retried",
    "pgflow_executor_restarts": "executors replaced",
}


def metric_totals(text: str, names: Iterable[str] = METRICS) -> dict[str, float]:
    """Sum of each counter's samples over all labels, from Prometheus text."""
    wanted = set(names)
    totals = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            totals[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return totals


def metrics_line(url: str, text: str) -> str:
    if not text:
        return f"/metrics was served at {url} while the supervisor ran"
    totals = metric_totals(text)
    counts = ", ".join(f"{totals[name]:.0f} {label}" for name, label in METRICS.items())
    return f"/metrics was served at {url} while the supervisor ran: {counts}"
