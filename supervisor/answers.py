"""Answers waiting to be written: executors' outputs and failed attempts.

Everything that ended since the last round goes out in the next one, as one
transaction (a complete_tasks and a fail_tasks call); the round trip is the
batching window. The engine's verdict per answer comes back as `Outcome`s:

- accepted: recorded in metrics (and failed attempts logged);
- deferred (another transaction held the run): sent again next round;
- stale (another claim holds the task, or its run is over): counted, dropped.

A statement Postgres refuses for one row's data (an output jsonb cannot
hold) is split: each of its answers is sent alone, and the one still refused
fails its task with the reason. Any other statement error, or a lost
connection, keeps the answers for the next round (the token fence makes
sending twice harmless).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor import engine
from supervisor.backoff import Backoff
from supervisor.engine import Failure, Outcome
from supervisor.metrics import Metrics
from supervisor.pgconn import StatementError, Transaction
from supervisor.pool import Ended
from supervisor.tasks import HeldTask

log = logging.getLogger("pgflow.supervisor")

# A batch is one jsonb document, which Postgres caps at 256 MB.
MAX_BATCH_BYTES = 64 * 1024 * 1024
ROW_ERROR_CLASSES = ("22", "54")  # data exception, program limit exceeded


@dataclass(slots=True)
class Answer:
    task: HeldTask
    outcome: str  # success, error, timeout, crash
    duration: float
    output: bytes | None = None
    error: str | None = None
    details: dict[str, Any] | None = None
    alone: bool = False  # its batch was refused for one row's data: send it alone

    @classmethod
    def of(cls, ended: Ended) -> Answer:
        meta = ended.answer.meta if ended.answer is not None else {}
        if ended.outcome == "success":
            assert ended.answer is not None
            return cls(ended.task, "success", ended.duration, output=ended.answer.output)
        error = str(meta.get("error") or ended.message or "Unknown error")
        kind = {"timeout": "Timeout", "crash": "ExecutorCrashed"}.get(ended.outcome)
        details = {"type": meta.get("error_type") or kind, "traceback": meta.get("traceback")}
        return cls(ended.task, ended.outcome, ended.duration, error=error,
                   details={k: v for k, v in details.items() if v})


class PendingAnswers:
    def __init__(self, metrics: Metrics, batch_rows: int,
                 batch_bytes: int = MAX_BATCH_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._batch_rows = batch_rows
        self._batch_bytes = batch_bytes
        self.waiting: list[Answer] = []
        self.in_flight: dict[int, list[Answer]] = {}  # by round number
        self._round = 0
        # After a statement error that is not about one row (a bug, a timeout),
        # the answers wait a little before going again, so the loop cannot spin.
        self._backoff = Backoff(0.1, 5.0)
        self._hold_until = 0.0

    def __len__(self) -> int:
        return len(self.waiting) + sum(map(len, self.in_flight.values()))

    def add(self, ended: Ended) -> None:
        self.waiting.append(Answer.of(ended))

    def held(self) -> list[HeldTask]:
        return [a.task for a in self.waiting] + [
            a.task for batch in self.in_flight.values() for a in batch]

    def sendable(self) -> bool:
        return bool(self.waiting) and self._clock() >= self._hold_until

    def held_until(self) -> float | None:
        """When answers held back after an error may go again (None: not held)."""
        return self._hold_until if self.waiting and self._hold_until > self._clock() else None

    def transactions(self) -> list[Transaction]:
        """Take the waiting answers into transactions for the next round."""
        if not self.sendable():
            return []
        taken, self.waiting = self.waiting, []
        transactions = [self._transaction([a]) for a in taken if a.alone]
        batch: list[Answer] = []
        size = 0
        for answer in (a for a in taken if not a.alone):
            cost = len(answer.output or b"") + len(answer.error or "")
            if batch and (len(batch) >= self._batch_rows or size + cost > self._batch_bytes):
                transactions.append(self._transaction(batch))
                batch, size = [], 0
            batch.append(answer)
            size += cost
        if batch:
            transactions.append(self._transaction(batch))
        return transactions

    def _transaction(self, batch: list[Answer]) -> Transaction:
        self._round += 1
        key = self._round
        self.in_flight[key] = batch
        by_id = {id(a): a for a in batch}
        successes = [a for a in batch if a.outcome == "success"]
        failures = [a for a in batch if a.outcome != "success"]
        statements = []
        if successes:
            statements.append(engine.complete(
                [(a.task.task_id, a.task.token, a.output or b"null") for a in successes],
                self._on_outcomes(key, successes),
                self._on_failure(key, successes, by_id)))
        if failures:
            statements.append(engine.fail(
                [(a.task.task_id, a.task.token, a.error or "Unknown error", a.details)
                 for a in failures],
                self._on_outcomes(key, failures),
                self._on_failure(key, failures, by_id)))
        return Transaction(statements)

    # -- results ---------------------------------------------------------------

    def _settle(self, key: int, answers: list[Answer]) -> None:
        batch = self.in_flight.get(key)
        if batch is None:
            return
        settled = {id(a) for a in answers}
        batch[:] = [a for a in batch if id(a) not in settled]
        if not batch:
            del self.in_flight[key]

    def _on_outcomes(self, key: int, answers: list[Answer]) -> Callable[[list[Outcome]], None]:
        def record(outcomes: list[Outcome]) -> None:
            by_task = {o.task_id: o for o in outcomes}
            late = 0
            for answer in answers:
                outcome = by_task.get(answer.task.task_id)
                if outcome is not None and outcome.deferred:
                    self.waiting.append(answer)
                elif outcome is None:
                    late += 1  # another claim holds the task, or its run is over
                else:
                    self._accepted(answer, outcome)
            if late:
                self._metrics.late_answers_ignored(late)
            self._backoff.reset()
            self._settle(key, answers)

        return record

    def _on_failure(self, key: int, answers: list[Answer],
                    batch: dict[int, Answer]) -> Callable[[Failure], None]:
        def keep(failure: Failure) -> None:
            self._settle(key, answers)
            if isinstance(failure, StatementError) and failure.aborted:
                self.waiting += answers  # its transaction failed elsewhere: try again
                return
            if isinstance(failure, StatementError) and (failure.sqlstate or "")[:2] in ROW_ERROR_CLASSES:
                if len(answers) > 1 or not answers[0].alone:
                    for answer in answers:
                        answer.alone = True
                    self.waiting += answers
                else:
                    self.waiting.append(_unstorable(answers[0], failure.message))
                return
            if isinstance(failure, StatementError):
                delay = self._backoff.next_delay()
                self._hold_until = self._clock() + delay
                log.warning("writing %d answers failed (%s: %s); trying again in %.1fs",
                            len(answers), failure.sqlstate, failure.message, delay)
            self.waiting += answers

        return keep

    def _accepted(self, answer: Answer, outcome: Outcome) -> None:
        task = answer.task
        self._metrics.task_finished(task.flow_slug, task.step_slug, answer.outcome,  # type: ignore[arg-type]
                                    answer.duration)
        if answer.outcome != "success":
            _log_failed_attempt(answer, outcome)
        if outcome.retry:
            self._metrics.task_retried(task.flow_slug, task.step_slug)
        if outcome.run_status:
            self._metrics.run_finished(task.flow_slug, outcome.run_status, outcome.run_seconds or 0.0)


def _unstorable(answer: Answer, reason: str) -> Answer:
    """The failure an output Postgres refused turns into."""
    return Answer(answer.task, "error", answer.duration,
                  error=f"Output could not be stored: {reason}",
                  details={"type": "OutputNotStorable"})


def _log_failed_attempt(answer: Answer, outcome: Outcome) -> None:
    """WARNING with the first line of the error, DEBUG with the traceback; in
    JSON logs the task's fields are fields of the record."""
    task = answer.task
    fields = {"run_id": task.run_id, "flow": task.flow_slug, "step": task.step_slug,
              "task_index": task.task_index, "attempt": task.attempt}
    lines = (answer.error or "").strip().splitlines() or [""]
    then = "will retry" if outcome.retry else "no attempts left"
    log.warning("attempt %d of %s/%s failed (run %s, task %d; %s): %s", task.attempt,
                task.flow_slug, task.step_slug, task.run_id, task.task_index, then, lines[0],
                extra=fields)
    traceback = (answer.details or {}).get("traceback")
    if traceback or len(lines) > 1:
        log.debug("attempt %d of %s/%s (run %s, task %d) failed with:\n%s", task.attempt,
                  task.flow_slug, task.step_slug, task.run_id, task.task_index,
                  traceback or answer.error, extra=fields)
