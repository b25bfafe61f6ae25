"""The pool of executor processes and the tasks they run.

It forks executors up to the target size (backing off in a crash loop or
when the system refuses a fork), hands them tasks, reads their answers,
kills the ones past a deadline, reaps the dead, recycles and scales. What
happens to tasks comes out as values: `Ended` (an answer, a timeout, a
crash, a cancellation) and tasks `returned` unstarted by an executor that
went away (they go back to the supervisor's buffer). The pool never talks to
the database.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from executor import protocol
from supervisor.backoff import Backoff, RespawnPolicy
from supervisor.executors import ExecutorProcess, ExecutorState, describe_exit, left_on_purpose
from supervisor.metrics import Metrics
from supervisor.pace import Pace
from supervisor.tasks import HeldTask

log = logging.getLogger("pgflow.supervisor.pool")

Outcome = Literal["success", "error", "timeout", "crash", "cancelled"]


@dataclass(slots=True)
class Ended:
    task: HeldTask
    outcome: Outcome
    duration: float
    answer: protocol.Answer | None = None  # success and error
    message: str | None = None  # timeout and crash


class Pool:
    def __init__(
        self,
        size: int,
        spawn: Callable[[], ExecutorProcess],
        selector: selectors.BaseSelector,
        metrics: Metrics,
        *,
        depth: int = 1,
        kill_grace: float = 0.5,
        max_tasks_per_executor: int = 0,
        max_memory_mib: int = 0,
    ) -> None:
        self.size = size
        self._spawn = spawn
        self._selector = selector
        self._metrics = metrics
        self._depth = depth
        self._kill_grace = kill_grace
        self._max_tasks = max_tasks_per_executor
        self._max_memory_kb = max_memory_mib * 1024
        self.children: dict[int, ExecutorProcess] = {}
        self.ended: list[Ended] = []
        self.returned: list[HeldTask] = []
        self.respawn_at = 0.0
        self.fork_error: str | None = None
        self._policy = RespawnPolicy()
        self._fork_backoff = Backoff(0.1, 10.0)
        self.pace = Pace()

    # -- views -----------------------------------------------------------------

    def serving(self) -> list[ExecutorProcess]:
        """Executors that count towards the target size."""
        return [c for c in self.children.values() if c.serving]

    def busy(self) -> list[ExecutorProcess]:
        return [c for c in self.children.values() if c.tasks]

    def counts(self) -> tuple[int, int, int]:
        """(idle executors, busy executors, tasks waiting inside executors)."""
        idle = busy = waiting = 0
        for c in self.children.values():
            if c.tasks:
                busy += 1
                waiting += len(c.tasks) - 1
            elif c.serving:
                idle += 1
        return idle, busy, waiting

    def capacity(self) -> int:
        """Tasks the serving executors would take now (one each if idle;
        queuing behind short tasks is a bonus, not counted)."""
        return sum(1 for c in self.children.values() if c.serving and not c.tasks) + max(
            self.size - len(self.serving()), 0)

    def next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self.children.values()
                     if c.deadline is not None and c.state != ExecutorState.KILLED]
        return min(deadlines, default=None)

    def take(self) -> tuple[list[Ended], list[HeldTask]]:
        ended, self.ended = self.ended, []
        returned, self.returned = self.returned, []
        return ended, returned

    # -- executors come and go ------------------------------------------------------

    def fill(self, now: float) -> None:
        """Fork executors up to the target size, unless a crash loop or a
        refused fork backs off."""
        while len(self.serving()) < self.size and now >= self.respawn_at:
            try:
                child = self._spawn()
            except OSError as exc:
                delay = self._fork_backoff.next_delay()
                self.respawn_at = now + delay
                if self.fork_error is None:
                    log.error("cannot start an executor: %s; retrying in %.1fs", exc, delay)
                self.fork_error = str(exc)
                self._metrics.executor_fork_failed()
                return
            if self.fork_error is not None:
                log.info("executors start again")
            self.fork_error = None
            self._fork_backoff.reset()
            self.children[child.pid] = child
            self._selector.register(child.fd, selectors.EVENT_READ, self._callback(child))
            log.debug("forked executor %d", child.pid)

    def reap(self, now: float) -> None:
        """Collect every exited executor; a task it was running crashed with it."""
        while self.children:
            try:
                # Peek first: until it is reaped, the zombie keeps its pid, so
                # its process group cannot have been handed to another process.
                exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if exited is None or exited.si_pid == 0:
                return
            pid = exited.si_pid
            if pid in self.children:
                # Whatever its handlers forked dies with it, however it ended
                # (the OOM killer, an operator's kill, a recycle): it led that group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self._read(child, now)  # answers it wrote before it died
            self._forget(child)
            how = describe_exit(status)
            running = child.running
            self.returned += child.take_waiting()
            if running is not None:
                child.tasks.clear()
                message = f"Executor process {pid} {how} while running this task"
                log.warning("task %d (%s/%s): %s", running.task_id, running.flow_slug,
                            running.step_slug, message)
                self.ended.append(Ended(running, "crash", now - child.running_since,
                                        message=message))
            crashed = (child.state in (ExecutorState.SERVING, ExecutorState.RETIRING)
                       and running is None and not left_on_purpose(status))
            if crashed or running is not None:
                self._metrics.executor_restarted("crash")
            delay = self._policy.delay_after_exit(now - child.started_at, crashed)
            if delay:
                self.respawn_at = now + delay
                log.warning("executor %d %s %.1fs after it started; next fork in %.1fs "
                            "(crash streak %d)", pid, how, now - child.started_at, delay,
                            self._policy.crash_streak)

    def scale(self, delta: int) -> None:
        """Change the target size by delta (never below one)."""
        new_size = max(1, self.size + delta)
        surplus = len(self.serving()) - new_size
        if surplus > 0:
            for child in sorted(self.serving(), key=lambda c: len(c.tasks))[:surplus]:
                self._retire(child, "scale")
        self.size = new_size

    def retire_all(self, reason: str) -> None:
        for child in list(self.children.values()):
            if child.state == ExecutorState.SERVING:
                self._retire(child, reason)

    def _retire(self, child: ExecutorProcess, reason: str) -> None:
        """Out of service: closed at once if idle, after its tasks otherwise."""
        if child.state == ExecutorState.SERVING:
            child.state = ExecutorState.RETIRING
            child.reason = reason
        if not child.tasks and child.state == ExecutorState.RETIRING:
            self._forget(child)
            child.close()

    def kill_running(self, reason: str, now: float) -> list[HeldTask]:
        """Kill every busy executor; return all its tasks (for a shutdown that
        gives them back without charging an attempt)."""
        tasks: list[HeldTask] = []
        for child in self.busy():
            tasks += child.tasks
            child.tasks.clear()
            child.deadline = None
            child.kill(reason)
        return tasks

    def kill_runs(self, run_ids: set[str], now: float) -> int:
        """Stop the handlers running tasks of these (cancelled) runs."""
        return self._kill_running_where(lambda task: task.run_id in run_ids, now)

    def kill_lost(self, task_ids: set[int], now: float) -> int:
        """Stop the handlers running tasks this supervisor no longer holds (the
        heartbeat says so: their run was cancelled, or their lease lapsed and
        another claim took them): their answers would be refused."""
        return self._kill_running_where(lambda task: task.task_id in task_ids, now)

    def _kill_running_where(self, condition: Callable[[HeldTask], bool], now: float) -> int:
        killed = 0
        for child in self.busy():
            running = child.running
            if running is None or not condition(running):
                continue
            started = child.running_since
            child.tasks.popleft()
            self.returned += child.take_waiting()
            child.tasks.clear()
            child.deadline = None
            child.kill("cancel")
            self._metrics.executor_restarted("cancel")
            self.ended.append(Ended(running, "cancelled", now - started))
            killed += 1
        return killed

    def stop_all(self, timeout: float) -> None:
        """Close every executor's socket, wait up to `timeout`, then SIGKILL the rest."""
        for child in list(self.children.values()):
            child.reason = child.reason or "shutdown"
            self._forget(child)
            child.close()
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            self.reap(time.monotonic())
            time.sleep(0.01)
        for child in list(self.children.values()):
            child.kill("shutdown")
        while self.children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)

    # -- tasks -----------------------------------------------------------------------

    def dispatch(self, buffer: collections.deque[HeldTask], now: float) -> list[HeldTask]:
        """Hand buffered tasks to executors: idle ones first; behind a running
        task only when both are short. Returns the tasks handed over."""
        sent: list[HeldTask] = []
        touched: set[ExecutorProcess] = set()
        # Busy executors whose every task is short, worked out once per call
        # (no executor becomes idle during it, and only short tasks join them).
        queueable: list[ExecutorProcess] | None = None
        while buffer:
            child = self._idle()
            if child is None:
                if self._depth <= 1 or not self._is_short(buffer[0]):
                    break
                if queueable is None:
                    queueable = [c for c in self.children.values() if c.serving and c.tasks
                                 and all(self._is_short(t) for t in c.tasks)]
                child = min((c for c in queueable if len(c.tasks) < self._depth),
                            key=lambda c: len(c.tasks), default=None)
                if child is None:
                    break
            task = buffer.popleft()
            child.send(task, now, self._kill_grace)
            sent.append(task)
            touched.add(child)
        for child in touched:
            child.flush()
            self._watch(child)
        return sent

    def _idle(self) -> ExecutorProcess | None:
        for child in self.children.values():
            if child.serving and not child.tasks:
                return child
        return None

    def _is_short(self, task: HeldTask) -> bool:
        return self.pace.is_short(task.flow_slug, task.step_slug)

    def typical_task_seconds(self) -> float | None:
        """How long tasks usually take here (any step), or None before the first."""
        return self.pace.typical

    def check_deadlines(self, now: float) -> None:
        """Kill executors whose running task overran its deadline. An answer
        already waiting in the socket (the loop was paused, say by SIGSTOP)
        is read first: the task is judged by what it did, not by when we looked."""
        for child in self.busy():
            if child.deadline is None or now < child.deadline or child.state == ExecutorState.KILLED:
                continue
            self._read(child, now)
            if child.deadline is None or now < child.deadline or not child.tasks:
                continue
            task, started = child.tasks.popleft(), child.running_since
            self.returned += list(child.tasks)
            child.tasks.clear()
            child.deadline = None
            child.kill("timeout")
            self._metrics.executor_restarted("timeout")
            log.warning("task %d (%s/%s) overran %dms: killed executor %d", task.task_id,
                        task.flow_slug, task.step_slug, task.timeout_ms, child.pid)
            self.ended.append(Ended(task, "timeout", now - started,
                                    message=f"Task timed out after {task.timeout_ms}ms"))

    # -- executors' sockets ----------------------------------------------------------

    def _callback(self, child: ExecutorProcess) -> Callable[[int], None]:
        def on_event(mask: int) -> None:
            if mask & selectors.EVENT_WRITE:
                child.flush()
            if mask & selectors.EVENT_READ:
                self._read(child, time.monotonic())
            self._watch(child)

        return on_event

    def _read(self, child: ExecutorProcess, now: float) -> None:
        if child.fd < 0 or child.eof:
            return
        try:
            answers = child.read()
        except protocol.FrameError as exc:
            log.error("executor %d sent a corrupt answer (%s): killing it", child.pid, exc)
            child.kill("crash")
            return
        for answer in answers:
            self._answered(child, answer, now)

    def _answered(self, child: ExecutorProcess, answer: protocol.Answer, now: float) -> None:
        running = child.running
        if running is None or answer.task_id != running.task_id:
            return  # the task already ended at its deadline
        duration = now - child.running_since
        child.finish_running(now, self._kill_grace)
        self.pace.learn(running.flow_slug, running.step_slug,
                        float(answer.meta.get("duration_s") or duration))
        child.max_rss_kb = int(answer.meta.get("max_rss_kb") or 0)
        if answer.ok:
            self.ended.append(Ended(running, "success", duration, answer))
        elif answer.meta.get("timed_out"):
            # Its state after an interrupted handler is unknown; it has stopped
            # reading tasks, so the ones queued behind go back unharmed.
            self.ended.append(Ended(running, "timeout", duration, answer))
            self.returned += list(child.tasks)
            child.tasks.clear()
            child.deadline = None
            child.kill("timeout")
            self._metrics.executor_restarted("timeout")
            return
        else:
            self.ended.append(Ended(running, "error", duration, answer))
        self._after_task(child)

    def _after_task(self, child: ExecutorProcess) -> None:
        if self._max_tasks and child.tasks_done >= self._max_tasks:
            self._recycle(child, f"after {child.tasks_done} tasks")
        elif self._max_memory_kb and child.max_rss_kb > self._max_memory_kb:
            self._recycle(child, f"at {child.max_rss_kb // 1024} MiB")
        elif child.state == ExecutorState.RETIRING:
            self._retire(child, child.reason or "retire")

    def _recycle(self, child: ExecutorProcess, why: str) -> None:
        if child.state == ExecutorState.SERVING:
            log.info("recycling executor %d %s", child.pid, why)
            self._metrics.executor_restarted("recycle")
        self._retire(child, "recycle")

    def _watch(self, child: ExecutorProcess) -> None:
        """Keep the selector's interest in step with the executor's state."""
        if child.pid not in self.children or child.fd < 0:
            return
        if child.eof:
            self._forget(child)
            return
        key = self._selector.get_map().get(child.fd)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if child.wants_write else 0)
        if key is not None and key.events != events:
            self._selector.modify(child.fd, events, key.data)

    def _forget(self, child: ExecutorProcess) -> None:
        if child.fd >= 0 and child.fd in self._selector.get_map():
            self._selector.unregister(child.fd)
