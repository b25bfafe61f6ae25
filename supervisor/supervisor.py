"""The supervisor: one single-threaded loop that claims tasks from Postgres and
runs them in forked executor processes.

Each turn of the loop: wait for events (the LISTEN connection, every child's
socket, signals, the HTTP endpoint, the next timer); handle signals; reap
exited children; kill children past their deadline; run due timers
(heartbeat, fallback poll, due retries, reconnects); write answers in
batches; claim for idle children plus a small prefetch; dispatch.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
import sys
import time
import uuid
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

import pgflow
from pgflow import ClaimedTask, Client, Flow
from supervisor.answers import PendingAnswers
from supervisor.children import ExecutorProcess, fork_executor
from supervisor.database import Database
from supervisor.http import HttpEndpoint
from supervisor.listener import Listener
from supervisor.metrics import Metrics, Outcome
from supervisor.pool import Pool
from supervisor.sdnotify import Notifier
from supervisor.settings import Settings
from supervisor.signals import SignalQueue
from supervisor.store import DatabaseUnavailable, Store

log = logging.getLogger("pgflow.supervisor")

# When several claimable tasks are locked by another claimer, retry shortly
# rather than spin.
CONTENDED_RETRY = 0.05


class Supervisor:
    def __init__(self, settings: Settings, flows: dict[str, Flow]) -> None:
        self.settings = settings
        self.flows = flows
        self.worker_id = uuid.uuid4()
        self.selector = selectors.DefaultSelector()
        self.metrics = Metrics(info=self._info())
        self.store = Store(settings.database_url, self.worker_id, list(flows), settings.hostname,
                           settings.lease_grace, self.metrics)
        listener = Listener(settings.database_url, set(flows), f"pgflow listener {settings.hostname}")
        self.db = Database(self.store, listener, self.selector, self.metrics, self._notified)
        self.signals = SignalQueue()
        self.pool = Pool(settings.processes, self._fork, self.selector, self._on_answers)
        self.notifier = Notifier.from_environment()
        self.http: HttpEndpoint | None = None

        # Claimed tasks waiting for an idle executor, with when they were claimed.
        self.buffer: collections.deque[tuple[ClaimedTask, float]] = collections.deque()
        self.answers = PendingAnswers(self.metrics, settings.complete_batch)
        self.dirty = True  # poll once at start
        self.stopping: str | None = None  # "drain", "reload" or "fast"
        self.stop_deadline = 0.0

        now = time.monotonic()
        self.next_heartbeat = now + settings.heartbeat_interval
        self.next_poll = now + settings.poll_interval
        self.next_due: float | None = None
        self.next_queue_stats = now
        watchdog = self.notifier.watchdog_interval()
        self.watchdog_interval = watchdog
        self.next_watchdog = now if watchdog else None

    def _info(self) -> dict[str, str]:
        s = self.settings
        return {
            "version": pgflow.__version__, "hostname": s.hostname, "processes": str(s.processes),
            "prefetch": str(s.prefetch), "max_tasks_per_child": str(s.max_tasks_per_child),
            "max_memory_per_child_mib": str(s.max_memory_per_child),
            "shutdown_timeout_s": str(s.shutdown_timeout),
        }

    def _fork(self) -> ExecutorProcess:
        return fork_executor(self.flows, self.settings.database_url)

    # -- lifecycle ------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; returns the exit code (re-executes itself on HUP)."""
        self.start()
        try:
            while self.tick():
                pass
        finally:
            self.stop()
        if self.stopping == "reload":
            self._reexec()
        return 0

    def start(self) -> None:
        s = self.settings
        with Client(s.database_url, application_name=f"pgflow supervisor {s.hostname}") as client:
            if s.migrate:
                applied = client.migrate()
                if applied:
                    log.info("applied migrations: %s", ", ".join(applied))
            for flow in self.flows.values():
                log.info("flow %r: %s", flow.slug, client.register(flow))
                self.metrics.declare_flow(flow.slug, list(flow.steps))
        self.db.connect()
        for warning in self.store.server_warnings():
            log.warning("%s", warning)
        self.signals.install()
        self.signals.register(self.selector)
        if s.metrics_port:
            self.http = HttpEndpoint(s.metrics_host, s.metrics_port, {
                "/metrics": lambda: (200, CONTENT_TYPE_LATEST, self.metrics.render()),
                "/healthz": lambda: (200, "text/plain", b"ok\n"),
                "/readyz": self._readyz,
            })
            self.http.start()
            self.http.register(self.selector)
        self.pool.fill(time.monotonic())
        log.info("supervisor %d serving %s with %d executors (worker %s)%s", os.getpid(),
                 ", ".join(self.flows), s.processes, self.worker_id,
                 f", metrics on {s.metrics_host}:{self.http.port}" if self.http else "")
        self.notifier.ready(f"serving {len(self.flows)} flows with {s.processes} executors")

    def _readyz(self) -> tuple[int, str, bytes]:
        ready = self.db.ready and bool(self.pool.serving())
        return (200, "text/plain", b"ready\n") if ready else (503, "text/plain", b"not ready\n")

    def tick(self) -> bool:
        """One turn of the loop; False once a stop has finished draining."""
        now = time.monotonic()
        for key, mask in self.selector.select(max(self._next_wakeup(now) - now, 0.0)):
            key.data(mask)
        self._handle_signals()
        now = time.monotonic()
        self._reap(now)
        self._enforce_deadlines(now)
        self._run_timers(now)
        if self._flush_due(now):
            self._flush_answers()
        if not self.stopping:
            self.pool.fill(now)
            self._claim(now)
        self._dispatch(now)
        self._update_gauges()
        if self.http:
            self.http.expire(now)
        return not (self.stopping and self._stopped(now))

    def stop(self) -> None:
        if self.stopping != "reload":  # a reload says RELOADING=1, then READY=1 after exec
            self.notifier.stopping()
        self._release_buffered()
        self.pool.stop_all(timeout=5.0)
        self._reap(time.monotonic())
        self._flush_answers()
        if self.answers:
            log.warning("%d answers could not be written; their leases will expire and the tasks "
                        "will run again", len(self.answers))
        with contextlib.suppress(DatabaseUnavailable):
            self.store.stop_worker()
        self.db.close()
        if self.http:
            self.http.close()
        self.signals.uninstall()
        self.signals.close()
        self.selector.close()
        log.info("supervisor %d stopped", os.getpid())

    def _reexec(self) -> None:
        """Replace this process with a fresh start of the same command (same pid).

        When started through a script (the `pgflow` console script), exec the
        script itself, so its shebang picks the interpreter: a deploy that
        switched the virtualenv behind a symlink then runs the new one.
        """
        log.info("re-executing %s", " ".join(sys.orig_argv))
        sys.stdout.flush()
        sys.stderr.flush()
        script = sys.orig_argv[1] if len(sys.orig_argv) > 1 else ""
        if os.path.isfile(script) and os.access(script, os.X_OK):
            os.execv(script, sys.orig_argv[1:])
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

    # -- signals ----------------------------------------------------------------

    def _handle_signals(self) -> None:
        for sig in self.signals.pop_all():
            if sig in (signal.SIGTERM, signal.SIGHUP):
                mode = "drain" if sig == signal.SIGTERM else "reload"
                self._begin_stop("fast" if self.stopping else mode)
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                self._begin_stop("fast")
            elif sig in (signal.SIGTTIN, signal.SIGTTOU) and not self.stopping:
                self.pool.scale(1 if sig == signal.SIGTTIN else -1)
                self.metrics.executor_restarted("scale")
                log.info("pool size is now %d", self.pool.size)

    def _begin_stop(self, mode: str) -> None:
        log.info("stopping (%s)", mode)
        if mode == "reload":
            self.notifier.reloading()
        else:
            self.notifier.stopping()
        self.stopping = mode
        self.stop_deadline = time.monotonic() + self.settings.shutdown_timeout
        self._release_buffered()
        if mode == "fast":
            self._abandon_running("stopping at once")

    def _abandon_running(self, why: str) -> None:
        """Kill busy executors and give their tasks back without charging an attempt."""
        released = []
        for child in self.pool.busy():
            released += [(t.task_id, t.token) for t in child.tasks]
            child.tasks.clear()
            child.deadline = None
            self.pool.kill(child, "shutdown")
        if released:
            log.warning("%s: releasing %d running tasks", why, len(released))
            self._release(released)

    def _stopped(self, now: float) -> bool:
        if self.stopping != "fast" and self.pool.busy() and now < self.stop_deadline:
            return False
        if self.pool.busy():
            self._abandon_running(f"shutdown timeout ({self.settings.shutdown_timeout:g}s)")
        return True

    def _release_buffered(self) -> None:
        self._release([(t.task_id, t.token) for t, _ in self.buffer])
        self.buffer.clear()

    def _release(self, tasks: list[tuple[int, int]]) -> None:
        if not tasks:
            return
        try:
            self.store.release(tasks)
        except DatabaseUnavailable:
            log.warning("could not release %d tasks (database unavailable); they run again when "
                        "their leases expire", len(tasks))

    # -- children -----------------------------------------------------------------

    def _on_answers(self, child: ExecutorProcess, answers: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for answer in answers:
            task = child.task
            if task is None or answer.get("task_id") != task.task_id:
                continue  # from a task already failed at its deadline
            child.finish_task(now)
            outcome: Outcome
            duration = float(answer.get("duration_s", 0.0))
            if answer.get("ok"):
                outcome = "success"
                self.answers.succeeded(task, answer.get("output"), duration)
            else:
                outcome = "timeout" if answer.get("timed_out") else "error"
                self.answers.failed(task, str(answer.get("error")), outcome, duration)
            self._after_task(child, answer, outcome)

    def _after_task(self, child: ExecutorProcess, answer: dict[str, Any], outcome: Outcome) -> None:
        s = self.settings
        rss_mib = int(answer.get("max_rss_kb") or 0) / 1024
        if outcome == "timeout":
            # Its state after an interrupted handler is unknown; it has stopped
            # reading tasks, so the ones queued behind go back unharmed.
            self._rebuffer(child.take_all())
            self._kill(child, "timeout")
        elif s.max_tasks_per_child and child.tasks_done >= s.max_tasks_per_child:
            self.pool.retire(child, "recycle")
            self.metrics.executor_restarted("recycle")
        elif s.max_memory_per_child and rss_mib > s.max_memory_per_child:
            log.info("executor %d uses %.0f MiB (limit %d MiB): recycling", child.pid, rss_mib,
                     s.max_memory_per_child)
            self.pool.retire(child, "recycle")
            self.metrics.executor_restarted("recycle")
        else:
            self.pool.task_done(child)

    def _kill(self, child: ExecutorProcess, reason: str) -> None:
        """Kill an executor; tasks it had not started yet go back to the buffer."""
        self._rebuffer(child.take_unstarted())
        self.pool.kill(child, reason)
        self.metrics.executor_restarted(reason)  # type: ignore[arg-type]

    def _rebuffer(self, tasks: list[ClaimedTask]) -> None:
        if self.stopping:
            self._release([(t.task_id, t.token) for t in tasks])
        else:
            now = time.monotonic()
            self.buffer.extendleft((task, now) for task in reversed(tasks))

    def _enforce_deadlines(self, now: float) -> None:
        for child in self.pool.busy():
            if child.deadline is not None and now >= child.deadline and not child.killed:
                started = child.running_since
                self._kill(child, "timeout")
                task = child.finish_task(now)
                assert task is not None
                log.warning("task %d (%s/%s) overran %dms: killed executor %d", task.task_id,
                            task.flow_slug, task.step_slug, task.timeout_ms, child.pid)
                self.answers.failed(task, f"Task timed out after {task.timeout_ms}ms", "timeout",
                                    now - started)

    def _reap(self, now: float) -> None:
        for child, how in self.pool.reap(now):
            crashed = not child.killed and child.retire_reason is None
            if crashed:
                self.metrics.executor_restarted("crash")
            self._rebuffer(child.take_unstarted())
            started = child.running_since
            task = child.finish_task(now)
            if task is not None:
                message = f"Executor process {child.pid} {how} while running this task"
                log.warning("task %d (%s/%s): %s", task.task_id, task.flow_slug, task.step_slug,
                            message)
                self.answers.failed(task, message, "crash", now - started)

    # -- database -------------------------------------------------------------------

    def _claim(self, now: float) -> None:
        if not self.dirty or not self.store.connected:
            return
        if not self._claim_wanted():
            return  # still dirty: claim again when the buffer runs low
        want = self._free_slots() + self.settings.prefetch - len(self.buffer)
        try:
            tasks, next_due = self.store.claim(want)
        except DatabaseUnavailable as exc:
            self.db.lost(exc)
            return
        self.dirty = False
        self.buffer.extend((task, now) for task in tasks)
        for task in tasks:
            self.metrics.tasks_claimed(task.flow_slug, task.step_slug)
        if next_due is None:
            self.next_due = None
        elif next_due > 0:
            self.next_due = now + next_due
        elif tasks:
            self.dirty = True  # more are ready now
        else:
            self.next_due = now + CONTENDED_RETRY  # ready but locked by another claimer

    def _free_slots(self) -> int:
        depth = self.settings.executor_depth
        return sum(child.free_slots(depth) for child in self.pool.serving())

    def _claim_wanted(self) -> bool:
        """Claim in batches: when executors would otherwise wait, or when the
        prefetch buffer is down to half."""
        buffered = len(self.buffer)
        return self._free_slots() > buffered or buffered <= self.settings.prefetch // 2

    def _dispatch(self, now: float) -> None:
        """Hand buffered tasks to the executors with the most free slots
        (with the default depth of one: to idle executors)."""
        depth = self.settings.executor_depth
        while self.buffer:
            slots, child = max(((c.free_slots(depth), c) for c in self.pool.serving()),
                               key=lambda pair: pair[0], default=(0, None))
            if not slots or child is None:
                return
            task, claimed_at = self.buffer.popleft()
            self.metrics.task_started(task.flow_slug, task.step_slug, task.waited_s + now - claimed_at)
            child.send(task, now, self.settings.kill_grace)
            self.pool.watch(child)

    def _flush_due(self, now: float) -> bool:
        """Write answers now, or let a few more share the round trip?

        Under load, executors are fed from the prefetch buffer and do not wait
        for answers to be written, so answers may gather for up to flush_delay.
        Once the buffer is empty the written answers are what readies more
        work (dependent steps), so they go at once; so do full batches.
        """
        pending = len(self.answers)
        if not pending or not self.store.connected:
            return False
        return (
            pending >= self.settings.complete_batch
            or not self.buffer
            or self.stopping is not None
            or now - self.answers.oldest_at >= self.settings.flush_delay
        )

    def _flush_answers(self) -> None:
        if not self.answers or not self.store.connected:
            return
        try:
            self.answers.write(self.store)
        except DatabaseUnavailable as exc:
            self.db.lost(exc)

    def _held_tasks(self) -> list[tuple[int, int]]:
        """(task_id, token) of every task this supervisor holds: sent to an
        executor, buffered, or answered and not yet written."""
        held = [t for c in self.pool.children.values() for t in c.tasks]
        held += [t for t, _ in self.buffer]
        held += [t for t, _, _ in self.answers.tasks.values()]
        return [(t.task_id, t.token) for t in held]

    def _drop_lost(self, lost: set[int]) -> None:
        """Forget buffered tasks the engine says this supervisor no longer
        holds (their lease expired during a pause and another claim took
        them, or their run was cancelled): running them would be wasted work
        whose answers are refused anyway."""
        if not lost:
            return
        kept = collections.deque(entry for entry in self.buffer if entry[0].task_id not in lost)
        dropped = len(self.buffer) - len(kept)
        self.buffer = kept
        log.warning("%d held tasks are no longer ours (lease expired or run finished); dropped %d "
                    "buffered ones", len(lost), dropped)

    def _notified(self) -> None:
        self.dirty = True
        self.metrics.wakeup("notification")

    # -- timers -------------------------------------------------------------------------

    def _run_timers(self, now: float) -> None:
        s = self.settings
        if not self.store.connected:
            if now >= self.db.next_reconnect and self.db.reconnect():
                self.dirty = True  # notifications may have been lost: poll once
            return
        if now >= self.next_poll:
            self.next_poll = now + s.poll_interval
            self.dirty = True
            self.metrics.wakeup("poll")
        if self.next_due is not None and now >= self.next_due:
            self.next_due = None
            self.dirty = True
            self.metrics.wakeup("timer")
        try:
            if now >= self.next_heartbeat:
                self.next_heartbeat = now + s.heartbeat_interval
                self._drop_lost(self.store.heartbeat(self._held_tasks()))
                self.store.requeue_expired()
            if now >= self.next_queue_stats:
                self.next_queue_stats = now + s.queue_stats_interval
                self.metrics.set_queue(self.store.queue_stats())
                self.metrics.set_notification_queue_usage(self.store.notification_queue_usage())
        except DatabaseUnavailable as exc:
            self.db.lost(exc)
        if self.next_watchdog is not None and now >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = now + (self.watchdog_interval or 1.0)

    def _next_wakeup(self, now: float) -> float:
        if self.signals.pending:
            return now
        if self.store.connected:
            if self._flush_due(now) or (self.dirty and not self.stopping and self._claim_wanted()):
                return now
            candidates = [self.next_poll, self.next_heartbeat, self.next_queue_stats]
            if self.answers:
                candidates.append(self.answers.oldest_at + self.settings.flush_delay)
            if self.next_due is not None:
                candidates.append(self.next_due)
        else:
            candidates = [self.db.next_reconnect]
        candidates += [c.deadline for c in self.pool.busy() if c.deadline is not None]
        if len(self.pool.serving()) < self.pool.size:
            candidates.append(self.pool.respawn_at)
        if self.stopping:
            candidates.append(self.stop_deadline)
        if self.next_watchdog is not None:
            candidates.append(self.next_watchdog)
        return min(candidates)

    def _update_gauges(self) -> None:
        busy = self.pool.busy()
        self.metrics.set_executors(len(self.pool.idle()), len(busy))
        waiting_in_executors = sum(len(c.tasks) - 1 for c in busy)
        self.metrics.set_in_flight(len(busy), len(self.buffer) + waiting_in_executors)
