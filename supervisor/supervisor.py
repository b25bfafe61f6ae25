"""The supervisor: one single-threaded loop that claims tasks from Postgres
and runs them in forked executor processes.

Each turn: wait for events (the database's sockets, every executor's socket,
signals, the HTTP endpoint, the next timer); handle signals; collect ended
tasks (answers, deadlines, deaths); run due timers; keep the pool full;
hand buffered tasks to executors; and when the database is free, send the
next round: answers, releases, a claim if executors will want work, and
whatever the timers asked for.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import selectors
import sys
import time
from collections.abc import Callable, Mapping
from enum import Enum

from prometheus_client import CONTENT_TYPE_LATEST

from pgflow import Flow
from supervisor import claim_size
from supervisor.answers import PendingAnswers
from supervisor.database import Database
from supervisor.http import HttpEndpoint
from supervisor.maintenance import QueueVacuum
from supervisor.metrics import Metrics
from supervisor.pool import Pool
from supervisor.rounds import Rounds
from supervisor.sdnotify import Notifier
from supervisor.settings import Settings
from supervisor.signals import SignalQueue
from supervisor.tasks import HeldTask
from supervisor.timers import Timers

log = logging.getLogger("pgflow.supervisor")


class StopMode(Enum):
    DRAIN = "drain"  # TERM: no new work, running tasks finish (up to shutdown_timeout)
    RELOAD = "reload"  # HUP: drain, then re-execute the same command in place
    FAST = "fast"  # INT, QUIT, or a second TERM: running tasks are given back at once


class Supervisor:
    def __init__(self, settings: Settings, flows: Mapping[str, Flow], *, metrics: Metrics,
                 selector: selectors.BaseSelector, signals: SignalQueue, pool: Pool,
                 database: Database, rounds: Rounds, answers: PendingAnswers,
                 buffer: collections.deque[HeldTask], notifier: Notifier,
                 http: HttpEndpoint | None, vacuum: QueueVacuum | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.flows = flows
        self.metrics = metrics
        self.selector = selector
        self.signals = signals
        self.pool = pool
        self.database = database
        self.rounds = rounds
        self.answers = answers
        self.notifier = notifier
        self.http = http
        self.vacuum = vacuum
        self.clock = clock
        # Claimed tasks waiting for an executor (the prefetch buffer).
        self.buffer = buffer
        self.timers = Timers()
        self.stop_mode: StopMode | None = None

    # -- lifecycle ------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; returns the exit code (re-executes itself on HUP)."""
        self.start()
        try:
            while self.tick():
                pass
        finally:
            self.shutdown()
        if self.stop_mode is StopMode.RELOAD:
            self._reexec()
        return 0

    def start(self) -> None:
        s = self.settings
        if self.http is not None:
            self.http.start()
            self.http.register(self.selector)
        self.signals.install()
        self.signals.register(self.selector)
        now = self.clock()
        for name, interval in (("poll", self.database.poll_interval), ("queue_stats", 0.0),
                               ("heartbeat", s.heartbeat_interval)):
            self.timers.set(name, now + interval)
        if self.notifier.watchdog_interval():
            self.timers.set("watchdog", now)
        if self.vacuum is not None and s.queue_vacuum_interval:
            self.timers.set("vacuum", now + s.queue_vacuum_interval)
        if self.rounds.scheduler:
            self.timers.set("schedules", now)
            for line in self.rounds.scheduler.describe(datetime.datetime.now(datetime.UTC)):
                log.info("%s", line)
        self.pool.fill(now)
        self.database.service(now)
        log.info("supervisor %d serving %s with %d executors (worker %s)%s", os.getpid(),
                 ", ".join(self.flows), s.processes, self.rounds.worker_id,
                 f", metrics on {s.metrics_host}:{self.http.port}" if self.http else "")
        self.notifier.ready(f"serving {len(self.flows)} flows with {s.processes} executors")

    def tick(self) -> bool:
        """One turn of the loop; False once a stop has finished."""
        for key, mask in self.selector.select(self._timeout()):
            key.data(mask)
        self.handle_signals()
        now = self.clock()
        self.database.service(now)
        self.pool.reap(now)
        self.pool.check_deadlines(now)
        self._collect()
        self._run_timers(now)
        if self.stop_mode is None:
            self.pool.fill(now)
        self._dispatch(now)
        self._send_round()
        self._update_gauges()
        if self.http is not None:
            self.http.expire(now)
        return not (self.stop_mode and self._stopped(now))

    def shutdown(self) -> None:
        if self.stop_mode is not StopMode.RELOAD:  # a reload says READY=1 again after exec
            self.notifier.stopping()
        self.pool.stop_all(timeout=5.0)
        self.pool.reap(self.clock())
        self._collect()
        self.rounds.finish(self.buffer)
        self._drain_database(deadline=self.clock() + 5.0)
        if len(self.answers):
            log.warning("%d answers could not be written; their leases will expire and the tasks "
                        "will run again", len(self.answers))
        self.database.close()
        if self.http is not None:
            self.http.close()
        self.signals.uninstall()
        self.signals.close()
        self.selector.close()
        log.info("supervisor %d stopped", os.getpid())

    def _drain_database(self, deadline: float) -> None:
        """Write what is left (answers, releases, the worker's stop) before leaving."""
        while self.database.up and self.clock() < deadline:
            if self.database.idle and not self.rounds.pending(self.answers):
                return
            self._send_round()
            for key, mask in self.selector.select(max(deadline - self.clock(), 0.0)):
                key.data(mask)

    def _reexec(self) -> None:
        """Replace this process with a fresh start of the same command (same pid).

        When started through a script (the `pgflow` console script), exec the
        script itself, so its shebang picks the interpreter: a deploy that
        switched the virtualenv behind a symlink then runs the new one.
        """
        log.info("re-executing %s", " ".join(sys.orig_argv))  # passwords masked by logs.MaskPasswords
        sys.stdout.flush()
        sys.stderr.flush()
        script = sys.orig_argv[1] if len(sys.orig_argv) > 1 else ""
        if os.path.isfile(script) and os.access(script, os.X_OK):
            os.execv(script, sys.orig_argv[1:])
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

    # -- signals ----------------------------------------------------------------

    def handle_signals(self) -> None:
        for sig in self.signals.pop_all():
            handler = getattr(self, f"handle_{sig.name[3:].lower()}", None)
            if handler is not None:
                handler()

    def handle_term(self) -> None:
        self._begin_stop(StopMode.FAST if self.stop_mode else StopMode.DRAIN)

    def handle_hup(self) -> None:
        self._begin_stop(StopMode.FAST if self.stop_mode else StopMode.RELOAD)

    def handle_int(self) -> None:
        self._begin_stop(StopMode.FAST)

    handle_quit = handle_int

    def handle_ttin(self) -> None:
        self._scale(+1)

    def handle_ttou(self) -> None:
        self._scale(-1)

    def _scale(self, delta: int) -> None:
        if self.stop_mode is None:
            self.pool.scale(delta)
            self.metrics.executor_restarted("scale")
            log.info("pool size is now %d", self.pool.size)

    def _begin_stop(self, mode: StopMode) -> None:
        log.info("stopping (%s)", mode.value)
        if mode is StopMode.RELOAD:
            self.notifier.reloading()
        else:
            self.notifier.stopping()
        if self.stop_mode is None:
            self.timers.set("stop", self.clock() + self.settings.shutdown_timeout)
        self.stop_mode = mode
        self.rounds.release(list(self.buffer))
        self.buffer.clear()
        self.pool.retire_all("shutdown")
        if mode is StopMode.FAST:
            self._abandon_running("stopping at once")

    def _abandon_running(self, why: str) -> None:
        """Kill busy executors and give their tasks back without charging an attempt."""
        tasks = self.pool.kill_running("shutdown", self.clock())
        if tasks:
            log.warning("%s: giving back %d running tasks", why, len(tasks))
            self.rounds.release(tasks)

    def _stopped(self, now: float) -> bool:
        if self.pool.busy():
            if self.stop_mode is not StopMode.FAST and now < (self.timers.get("stop") or now):
                return False
            self._abandon_running(f"shutdown timeout ({self.settings.shutdown_timeout:g}s)")
        return True

    # -- tasks ------------------------------------------------------------------

    def _collect(self) -> None:
        """Ended tasks become answers; tasks an executor never started go back."""
        ended, returned = self.pool.take()
        for end in ended:
            if end.outcome != "cancelled":
                self.answers.add(end)
            else:  # the engine ended it; a fenced release is a no-op, unless the run was retried
                self.rounds.release([end.task])
        if returned:
            if self.stop_mode is None:
                self.buffer.extendleft(reversed(returned))
            else:
                self.rounds.release(returned)

    def _dispatch(self, now: float) -> None:
        if not self.buffer:
            return
        for task in self.pool.dispatch(self.buffer, now):
            self.metrics.task_started(task.flow_slug, task.step_slug,
                                      task.waited_s + now - task.claimed_at)

    def _send_round(self) -> None:
        if self.database.idle:
            wanted = 0 if self.stop_mode else self._claim_size()
            transactions = self.rounds.next_round(self.answers, wanted, self.buffer)
            if transactions:
                self.database.send(transactions)

    def _claim_size(self) -> int:
        """How many tasks to claim now (see claim_size), when a claim is wanted.

        A round that carries answers claims too, even without a notification:
        completing a step readies its dependents in the same commit, and the
        claim that follows in the round sees them (a chain's next step costs
        no extra round trip)."""
        wanted = self.rounds.dirty or self.answers.sendable()
        if not wanted or self.pool.fork_error is not None and not self.pool.serving():
            return 0
        depth = claim_size.prefetch(self.settings.prefetch, self.pool.size,
                                    self.pool.typical_task_seconds())
        return claim_size.claim_size(self.pool.capacity(), len(self.buffer), depth)

    # -- timers -----------------------------------------------------------------

    def _timeout(self) -> float:
        if self.signals.pending:
            return 0.0
        now = self.clock()
        if self.database.idle and self.rounds.has_work(self.answers, self._claim_size()):
            return 0.0
        candidates = [t for t in (self.timers.next(), self.pool.next_deadline(),
                                  self.database.next_wakeup(), self.answers.held_until(),
                                  self.http.next_wakeup() if self.http else None)
                      if t is not None]
        if len(self.pool.serving()) < self.pool.size and self.stop_mode is None:
            candidates.append(self.pool.respawn_at)
        return max(min(candidates, default=now + 1.0) - now, 0.0)

    def _run_timers(self, now: float) -> None:
        s = self.settings
        for name in self.timers.pop_due(now):
            if name == "poll":
                self.rounds.wake("poll")
                self.timers.set("poll", now + self.database.poll_interval)
            elif name == "due":
                self.rounds.wake("timer")
            elif name == "heartbeat":
                self.rounds.heartbeat_due = True
                self.timers.set("heartbeat", now + s.heartbeat_interval)
            elif name == "queue_stats":
                self.rounds.stats_due = True
                self.timers.set("queue_stats", now + s.queue_stats_interval)
            elif name == "watchdog":
                self.notifier.watchdog()
                self.timers.set("watchdog", now + (self.notifier.watchdog_interval() or 1.0))
            elif name == "vacuum" and self.vacuum is not None:
                self.vacuum.run()
                self.timers.set("vacuum", now + s.queue_vacuum_interval)
            elif name == "stop":
                self.timers.set("stop", now)  # _stopped reads it: the drain is over
            elif name == "retention":
                self.rounds.retention_due = True
            elif name == "schedules":
                self.rounds.schedules_due = True
        if self.rounds.next_retention is not None:
            self.timers.set("retention", self.rounds.next_retention)
            self.rounds.next_retention = None
        if self.rounds.next_schedule_at is not None:
            self.timers.set("schedules", self.rounds.next_schedule_at)
            self.rounds.next_schedule_at = None
        if self.rounds.next_due is not None:
            self.timers.set("due", self.rounds.next_due)
            self.rounds.next_due = None
        # Sooner when notifications turn out not to arrive.
        self.timers.set_earlier("poll", now + self.database.poll_interval)

    def _update_gauges(self) -> None:
        idle, busy, waiting = self.pool.counts()
        self.metrics.set_executors(idle, busy)
        self.metrics.set_in_flight(busy, len(self.buffer) + waiting)

    # -- endpoints ----------------------------------------------------------------

    def readyz(self) -> tuple[int, str, bytes]:
        ready = (self.database.ready and bool(self.pool.serving())
                 and self.pool.fork_error is None and self.stop_mode is None)
        return (200, "text/plain", b"ready\n") if ready else (503, "text/plain", b"not ready\n")

    def endpoints(self) -> dict[str, Callable[[], tuple[int, str, bytes]]]:
        return {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, self.metrics.render()),
            "/healthz": lambda: (200, "text/plain", b"ok\n"),
            "/readyz": self.readyz,
        }
