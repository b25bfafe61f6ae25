"""Answers waiting to be written: executors' outputs and failed attempts,
gathered so that many share one round trip, then recorded in metrics once
the engine says which it accepted."""

from __future__ import annotations

import logging
import time
from typing import Any

from pgflow import ClaimedTask
from pgflow.worker_api import Accepted
from supervisor.metrics import Metrics, Outcome
from supervisor.store import Store

log = logging.getLogger("pgflow.supervisor")


class PendingAnswers:
    def __init__(self, metrics: Metrics, batch: int) -> None:
        self._metrics = metrics
        self._batch = batch
        self.oks: list[tuple[int, int, Any]] = []
        self.errors: list[tuple[int, int, str]] = []
        # Every unwritten answer's task, outcome and duration, by task id.
        self.tasks: dict[int, tuple[ClaimedTask, Outcome, float]] = {}
        self.oldest_at = 0.0  # when the oldest unwritten answer arrived

    def __len__(self) -> int:
        return len(self.tasks)

    def _note(self, task: ClaimedTask, outcome: Outcome, duration: float) -> None:
        if not self.tasks:
            self.oldest_at = time.monotonic()
        self.tasks[task.task_id] = (task, outcome, duration)

    def succeeded(self, task: ClaimedTask, output: Any, duration: float) -> None:
        self._note(task, "success", duration)
        self.oks.append((task.task_id, task.attempt, output))

    def failed(self, task: ClaimedTask, error: str, outcome: Outcome, duration: float) -> None:
        self._note(task, outcome, duration)
        self.errors.append((task.task_id, task.attempt, error))

    def write(self, store: Store) -> None:
        """Write everything in batches; raises DatabaseUnavailable, keeping
        what was not written for the next try."""
        while self.oks or self.errors:
            oks, errors = self.oks[: self._batch], self.errors[: self._batch]
            accepted = store.complete(oks) if oks else {}
            del self.oks[: len(oks)]
            self._record([a[0] for a in oks], accepted)
            accepted = store.fail(errors) if errors else {}
            del self.errors[: len(errors)]
            self._record([a[0] for a in errors], accepted, {a[0]: a[2] for a in errors})

    def _record(self, task_ids: list[int], accepted: dict[int, Accepted],
                errors: dict[int, str] | None = None) -> None:
        late = 0
        for task_id in task_ids:
            task, outcome, duration = self.tasks.pop(task_id)
            report = accepted.get(task_id)
            if report is None:
                late += 1  # another attempt holds the task, or its run is over
                continue
            if errors is not None:
                _log_failed_attempt(task, errors[task_id], report)
            self._metrics.task_finished(task.flow_slug, task.step_slug, outcome, duration)
            if report.retry:
                self._metrics.task_retried(task.flow_slug, task.step_slug)
            if report.run_status:
                self._metrics.run_finished(task.flow_slug, report.run_status, report.run_seconds or 0.0)
        if late:
            self._metrics.late_answers_ignored(late)


def _log_failed_attempt(task: ClaimedTask, error: str, report: Accepted) -> None:
    """WARNING with the first line of the error, DEBUG with all of it; in JSON
    logs the task's fields are fields of the record."""
    fields = {"run_id": str(task.run_id), "flow": task.flow_slug, "step": task.step_slug,
              "task_index": task.task_index, "attempt": task.attempt}
    lines = error.strip().splitlines() or [""]
    then = "will retry" if report.retry else "no attempts left"
    log.warning("attempt %d of %s/%s failed (run %s, task %d; %s): %s", task.attempt,
                task.flow_slug, task.step_slug, task.run_id, task.task_index, then, lines[0],
                extra=fields)
    if len(lines) > 1:
        log.debug("attempt %d of %s/%s (run %s, task %d) failed with:\n%s", task.attempt,
                  task.flow_slug, task.step_slug, task.run_id, task.task_index, error, extra=fields)
