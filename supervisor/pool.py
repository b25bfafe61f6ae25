"""The pool of executor processes: forking to the target size (with crash-loop
backoff), watching their sockets, reaping them, retiring and scaling.

The pool knows processes, not tasks: what a dead process was running is the
supervisor's business (it gets the process back from `reap`).
"""

from __future__ import annotations

import logging
import os
import selectors
import time
from collections.abc import Callable
from typing import Any

from supervisor.backoff import RespawnPolicy
from supervisor.children import ExecutorProcess, describe_exit

log = logging.getLogger("pgflow.supervisor.pool")

AnswerHandler = Callable[[ExecutorProcess, list[dict[str, Any]]], None]


class Pool:
    def __init__(
        self,
        size: int,
        spawn: Callable[[], ExecutorProcess],
        selector: selectors.BaseSelector,
        on_answers: AnswerHandler,
    ) -> None:
        self.size = size
        self._spawn = spawn
        self._selector = selector
        self._on_answers = on_answers
        self.children: dict[int, ExecutorProcess] = {}
        self.respawn_at = 0.0
        self._policy = RespawnPolicy()

    # -- views ----------------------------------------------------------------

    def idle(self) -> list[ExecutorProcess]:
        return [c for c in self.children.values() if c.idle]

    def busy(self) -> list[ExecutorProcess]:
        return [c for c in self.children.values() if c.task is not None]

    def serving(self) -> list[ExecutorProcess]:
        """Processes that count towards the target size."""
        return [c for c in self.children.values() if c.retire_reason is None and not c.eof]

    # -- lifecycle ------------------------------------------------------------

    def fill(self, now: float) -> int:
        """Fork processes up to the target size, unless a crash loop backs off."""
        forked = 0
        while len(self.serving()) < self.size and now >= self.respawn_at:
            child = self._spawn()
            self.children[child.pid] = child
            self._selector.register(child.fd, selectors.EVENT_READ, self._callback(child))
            forked += 1
            log.debug("forked executor %d", child.pid)
        return forked

    def _callback(self, child: ExecutorProcess) -> Callable[[int], None]:
        def on_event(mask: int) -> None:
            if mask & selectors.EVENT_WRITE:
                child.flush()
            if mask & selectors.EVENT_READ:
                answers = child.read_answers()
                if answers:
                    self._on_answers(child, answers)
            self.watch(child)

        return on_event

    def watch(self, child: ExecutorProcess) -> None:
        """Keep the selector's interest in step with the process's state."""
        if child.pid not in self.children or child.fd < 0:
            return
        if child.eof:
            self._forget_fd(child)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if child.wants_write else 0)
        key = self._selector.get_map().get(child.fd)
        if key is not None and key.events != events:
            self._selector.modify(child.fd, events, key.data)

    def _forget_fd(self, child: ExecutorProcess) -> None:
        if child.fd >= 0 and child.fd in self._selector.get_map():
            self._selector.unregister(child.fd)

    def retire(self, child: ExecutorProcess, reason: str) -> None:
        """Take a process out of service: at once if idle, after its task otherwise."""
        if child.retire_reason is None:
            child.retire_reason = reason
        if child.task is None:
            self._forget_fd(child)
            child.close()

    def kill(self, child: ExecutorProcess, reason: str) -> None:
        child.retire_reason = child.retire_reason or reason
        child.kill()

    def task_done(self, child: ExecutorProcess) -> None:
        """After a process answered: close it if it was retiring."""
        if child.retire_reason is not None:
            self.retire(child, child.retire_reason)

    def scale(self, delta: int) -> None:
        """Change the target size by delta (never below one)."""
        new_size = max(1, self.size + delta)
        if new_size < self.size:
            surplus = len(self.serving()) - new_size
            candidates = sorted(self.serving(), key=lambda c: c.task is not None)
            for child in candidates[:surplus]:
                self.retire(child, "scale")
        self.size = new_size

    def reap(self, now: float) -> list[tuple[ExecutorProcess, str]]:
        """Collect every exited process; schedule replacements."""
        exited = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self._forget_fd(child)
            child.close()
            # A process that died while running a task was (most likely) killed
            # by that task, whose retries deal with it: replace it at once. One
            # that dies on its own without a task is broken: back off.
            crashed = not child.killed and child.retire_reason is None and child.task is None
            delay = self._policy.delay_after_exit(time.monotonic() - child.started_at, crashed)
            if delay:
                self.respawn_at = now + delay
                log.warning(
                    "executor %d %s %.1fs after it started; next fork in %.1fs (crash streak %d)",
                    pid, describe_exit(status), time.monotonic() - child.started_at, delay,
                    self._policy.crash_streak,
                )
            exited.append((child, describe_exit(status)))
        return exited

    def stop_all(self, timeout: float) -> None:
        """Close every process's socket, wait up to `timeout`, then SIGKILL the rest."""
        for child in list(self.children.values()):
            child.retire_reason = child.retire_reason or "shutdown"
            self._forget_fd(child)
            child.close()
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            self.reap(time.monotonic())
            time.sleep(0.01)
        for child in list(self.children.values()):
            child.kill()
        while self.children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)
