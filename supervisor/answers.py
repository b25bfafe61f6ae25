"""Answers waiting to be written: executors' outputs and failed attempts,
gathered so that many share one round trip, then recorded in metrics once
the engine says which it accepted."""

from __future__ import annotations

import time
from typing import Any

from pgflow import ClaimedTask
from pgflow.worker_api import Accepted, Answered
from supervisor.metrics import Metrics, Outcome
from supervisor.store import Store


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
        self.oks.append((task.task_id, task.token, output))

    def failed(self, task: ClaimedTask, error: str, outcome: Outcome, duration: float) -> None:
        self._note(task, outcome, duration)
        self.errors.append((task.task_id, task.token, error))

    def write(self, store: Store) -> None:
        """Write everything in batches; raises DatabaseUnavailable, keeping
        what was not written for the next try. Answers deferred because
        another transaction held their run are kept for the next flush."""
        deferred_oks: list[tuple[int, int, Any]] = []
        deferred_errors: list[tuple[int, int, str]] = []
        while self.oks or self.errors:
            oks, errors = self.oks[: self._batch], self.errors[: self._batch]
            answered = store.complete(oks) if oks else Answered()
            del self.oks[: len(oks)]
            deferred_oks += [a for a in oks if a[0] in answered.deferred]
            self._record([a[0] for a in oks if a[0] not in answered.deferred], answered.accepted)
            answered = store.fail(errors) if errors else Answered()
            del self.errors[: len(errors)]
            deferred_errors += [a for a in errors if a[0] in answered.deferred]
            self._record([a[0] for a in errors if a[0] not in answered.deferred],
                         answered.accepted)
        self.oks, self.errors = deferred_oks, deferred_errors

    def _record(self, task_ids: list[int], accepted: dict[int, Accepted]) -> None:
        late = 0
        for task_id in task_ids:
            if task_id not in self.tasks:
                continue  # a second answer for the same task in this batch
            task, outcome, duration = self.tasks.pop(task_id)
            report = accepted.get(task_id)
            if report is None:
                late += 1  # another attempt holds the task, or its run is over
                continue
            self._metrics.task_finished(task.flow_slug, task.step_slug, outcome, duration)
            if report.retry:
                self._metrics.task_retried(task.flow_slug, task.step_slug)
            if report.run_status:
                self._metrics.run_finished(task.flow_slug, report.run_status, report.run_seconds or 0.0)
        if late:
            self._metrics.late_answers_ignored(late)
