"""What the supervisor asks of the database, one round at a time.

A round is everything that is due, sent together in one round trip on the
pipelined working connection, as separate transactions so one failure does
not undo the rest:

1. answers (complete_tasks, fail_tasks), committed durably;
2. tasks given back (release_tasks);
3. a claim and the time the next delayed task is due, committed without
   waiting for the WAL flush (a claim lost in a crash only queues its tasks
   again, and its token fences the lost claim's answers);
4. the worker's registration, heartbeat (which reports tasks no longer held),
   what the worker reports for `pgflow top` and lease expiry of
   other supervisors' tasks, queue statistics;
5. with `--retention`, at each tick, a batch of finished runs pruned if this
   supervisor wins the tick (see supervisor/retention.py);
6. due schedule ticks (start_due_ticks), when the "schedules" timer fired.

Every transaction sets its own lock and statement timeouts (never session
state), so the connection may go through a transaction pooler.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence

from supervisor import durations, engine
from supervisor.answers import PendingAnswers
from supervisor.engine import Failure
from supervisor.metrics import Metrics, WakeupSource
from supervisor.pgconn import Statement, Transaction
from supervisor.retention import RetentionChore
from supervisor.schedules import Scheduler, TickResult
from supervisor.settings import Settings
from supervisor.tasks import HeldTask

log = logging.getLogger("pgflow.supervisor")

# The loop never waits on a lock for long: answers for a run another
# transaction holds are deferred by the engine, and anything else that
# waits this long is given up and tried again in a later round.
LOCK_TIMEOUT = "5s"
STATEMENT_TIMEOUT = "60s"
CLAIM_RETRY_SECONDS = 1.0
# Schedules: look a little after a tick is due (the loop's clock and the
# wall clock are not the same), and at most this often after an answer.
SCHEDULE_MARGIN = 0.02
SCHEDULE_PAUSE = 0.2


class Rounds:
    def __init__(self, settings: Settings, flows: Sequence[str], metrics: Metrics,
                 buffer: collections.deque[HeldTask], held: Callable[[], list[HeldTask]],
                 worker_id: uuid.UUID | None = None, scheduler: Scheduler | None = None) -> None:
        self._settings = settings
        self._flows = list(flows)
        self._metrics = metrics
        self._buffer = buffer
        self._held = held
        self.worker_id = worker_id or uuid.uuid4()
        self.dirty = True  # claimable tasks may be waiting
        self.next_due: float | None = None  # monotonic time the next delayed task is due
        self.heartbeat_due = False
        self.stats_due = False
        self.register_due = False
        self.stop_due = False
        self.retention_due = False
        self.retention = (RetentionChore(settings.retention) if settings.retention else None)
        # Monotonic time of the next retention tick, for the loop's timer (it clears it).
        self.next_retention: float | None = (
            self.retention.first_at(time.monotonic()) if self.retention else None)
        self.releases: list[HeldTask] = []
        self._releasing: list[HeldTask] = []
        self.scheduler = scheduler
        self.schedules_due = False  # the "schedules" timer fired
        self.next_schedule_at: float | None = None  # monotonic; the loop arms its timer
        self._session = {"lock_timeout": LOCK_TIMEOUT, "statement_timeout": STATEMENT_TIMEOUT}

    # -- what the loop tells us ----------------------------------------------------

    def wake(self, source: WakeupSource) -> None:
        self.dirty = True
        self._metrics.wakeup(source)

    def on_notified(self, flows: set[str]) -> None:
        if flows & set(self._flows):
            self.wake("notification")

    def on_database_up(self) -> None:
        """(Re)connected: notifications may have been lost meanwhile, so claim once."""
        self.register_due = self.dirty = True
        if self.scheduler:
            self.schedules_due = True

    def release(self, tasks: list[HeldTask]) -> None:
        self.releases += tasks

    def finish(self, buffer: collections.deque[HeldTask]) -> None:
        """Stopping: give the buffer back and say the worker stopped."""
        self.release(list(buffer))
        buffer.clear()
        self.stop_due = True

    def pending(self, answers: PendingAnswers) -> bool:
        return bool(len(answers) or self.releases or self._releasing or self.stop_due)

    def has_work(self, answers: PendingAnswers, claim_size: int) -> bool:
        return bool(answers.sendable() or self.releases or claim_size or self.heartbeat_due
                    or self.stats_due or self.register_due or self.stop_due
                    or self.retention_due or self.schedules_due
                    or self.next_schedule_at is not None)  # the loop arms its timer first

    # -- composing a round ------------------------------------------------------------

    def next_round(self, answers: PendingAnswers, claim_size: int,
                   buffer: collections.deque[HeldTask]) -> list[Transaction]:
        transactions = answers.transactions()
        if self.register_due:
            self.register_due = False
            transactions.insert(0, Transaction([engine.register_worker(
                self.worker_id, self._settings.hostname, os.getpid(), self._flows,
                lambda: None, self._failed("register", lambda: setattr(self, "register_due", True)))]))
        if self.releases:
            transactions.append(Transaction([self._release_statement()]))
        if claim_size > 0:
            transactions.append(Transaction(self._claim_statements(claim_size),
                                            {"synchronous_commit": "off"}))
        if self.heartbeat_due:
            self.heartbeat_due = False
            held = [t.fence for t in self._held()]
            transactions.append(Transaction([engine.heartbeat(
                self.worker_id, held, self._settings.lease_grace, self._drop_lost,
                self._failed("heartbeat"))]))
            # A transaction of its own: a report that fails must not undo the heartbeat.
            m = self._metrics
            transactions.append(Transaction([engine.report_worker(
                self.worker_id, m.executors_total, m.executors_busy, m.tasks_buffered,
                m.attempts_succeeded, m.attempts_failed, self._failed("report"))]))
            transactions.append(Transaction([engine.requeue_expired(
                1000, self._requeued, self._failed("requeue"))]))
        if self.stats_due:
            self.stats_due = False
            transactions.append(Transaction([
                engine.queue_stats(self._flows, self._metrics.set_queue, self._failed("stats")),
                engine.notification_queue_usage(self._metrics.set_notification_queue_usage,
                                                self._failed("stats"))]))
        if self.retention_due and self.retention is not None:
            self.retention_due = False
            transactions.append(Transaction([self._retention_statement(self.retention)]))
        if self.schedules_due and not self.stop_due:
            self.schedules_due = False
            statement = self._schedules_statement()
            if statement is not None:
                transactions.append(Transaction([statement]))
        if self.stop_due and not self.releases and not self._releasing:
            self.stop_due = False
            transactions.append(Transaction([engine.stop_worker(
                self.worker_id, lambda: None, self._failed("stop"))]))
        for tx in transactions:
            tx.settings = {**self._session, **tx.settings}
        return transactions

    def _claim_statements(self, limit: int) -> list[Statement]:
        self.dirty = False
        started = time.perf_counter()

        def claimed(tasks: list[HeldTask]) -> None:
            self._metrics.db_roundtrip("claim", time.perf_counter() - started)
            self._buffer.extend(tasks)
            for task in tasks:
                self._metrics.tasks_claimed(task.flow_slug, task.step_slug)
            if len(tasks) >= limit:
                self.dirty = True  # there may be more

        def due_in(seconds: float | None) -> None:
            if seconds is not None:
                if seconds <= 0:
                    self.dirty = True
                else:
                    self.next_due = time.monotonic() + seconds

        def failed(failure: Failure) -> None:
            # Try again in a second (sooner on a notification), not at once:
            # a claim that keeps failing must not spin the loop.
            self.next_due = time.monotonic() + CLAIM_RETRY_SECONDS
            self._failed("claim")(failure)

        return [engine.claim(self.worker_id, self._flows, limit, self._settings.lease_grace,
                             claimed, failed),
                engine.next_due(self._flows, due_in, lambda failure: None)]

    def _retention_statement(self, chore: RetentionChore) -> Statement:
        started = time.perf_counter()

        def pruned(ran: bool, runs: int, tasks: int) -> None:
            self._metrics.db_roundtrip("retention", time.perf_counter() - started)
            if runs:
                log.info("retention: pruned %d runs (%d tasks) finished more than %s ago", runs,
                         tasks, durations.format_seconds(chore.older_than))
            self.next_retention = chore.next_at(time.monotonic(), time.time(),
                                                runs if ran else None)

        def failed(failure: Failure) -> None:
            self._failed("retention")(failure)
            self.next_retention = chore.next_at(time.monotonic(), time.time(), None)

        return engine.retention_tick(self.worker_id, chore.older_than, chore.batch_runs,
                                     chore.tick, pruned, failed)

    def _schedules_statement(self) -> Statement | None:
        """Start the runs of due schedule ticks; when nothing is due, only say
        when to look again."""
        scheduler = self.scheduler
        if not scheduler:
            return None
        now = datetime.datetime.now(datetime.UTC)
        items = scheduler.due(now)
        if not items:
            self._schedule_next(scheduler, now, SCHEDULE_MARGIN)
            return None

        def done(results: list[TickResult]) -> None:
            now = datetime.datetime.now(datetime.UTC)
            scheduler.on_result(results, now)
            # Not sooner than this: a tick the database's clock has not
            # reached yet is asked for again shortly, not in a tight loop.
            self._schedule_next(scheduler, now, SCHEDULE_PAUSE)

        def failed(failure: Failure) -> None:
            self._failed("schedules")(failure)
            self.next_schedule_at = time.monotonic() + 1.0

        return engine.start_due_ticks(items, done, failed)

    def _schedule_next(self, scheduler: Scheduler, now: datetime.datetime,
                       minimum: float) -> None:
        wait = (scheduler.next_check(now) - now).total_seconds()
        self.next_schedule_at = time.monotonic() + max(wait + SCHEDULE_MARGIN, minimum)

    def _release_statement(self) -> Statement:
        self._releasing, self.releases = self.releases, []

        def released(ids: set[int]) -> None:
            self._releasing = []

        def failed(failure: Failure) -> None:
            log.warning("could not give back %d tasks (%s); they run again when their leases "
                        "expire", len(self._releasing), failure)
            self._releasing = []

        return engine.release([t.fence for t in self._releasing], released, failed)

    # -- results --------------------------------------------------------------------

    def _drop_lost(self, lost: set[int]) -> None:
        """Forget buffered tasks the engine says this supervisor no longer
        holds (their lease expired during a pause and another claim took them,
        or their run was cancelled): running them would be wasted work whose
        answers are refused anyway."""
        if not lost:
            return
        kept = [t for t in self._buffer if t.task_id not in lost]
        dropped = len(self._buffer) - len(kept)
        if dropped:  # (the others are answered tasks whose answers were just written)
            self._buffer.clear()
            self._buffer.extend(kept)
            log.warning("dropped %d buffered tasks that are no longer ours (their lease "
                        "expired and another claim took them, or their run ended)", dropped)

    def drop_runs(self, run_ids: set[str]) -> None:
        """Drop buffered tasks of runs whose tasks were cancelled, giving them
        back: the release is fenced, so it changes nothing for a task that
        was cancelled, and returns one claimed after a retry that came
        between the cancel and its notification."""
        kept = [t for t in self._buffer if t.run_id not in run_ids]
        dropped = [t for t in self._buffer if t.run_id in run_ids]
        self._buffer.clear()
        self._buffer.extend(kept)
        self.release(dropped)

    def _requeued(self, count: int) -> None:
        if count:
            log.info("requeued %d tasks whose lease expired", count)

    def _failed(self, operation: str,
                then: Callable[[], object] | None = None) -> Callable[[Failure], None]:
        def report(failure: Failure) -> None:
            if not getattr(failure, "aborted", False):
                self._metrics.db_error(operation)
                log.warning("%s failed: %s", operation, failure)
            if then is not None:
                then()

        return report
