"""The pool with real forked processes, without a database."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time

from supervisor.executors import ExecutorProcess
from supervisor.metrics import Metrics
from supervisor.pool import Pool


def fork_broken() -> ExecutorProcess:
    """A process that dies at once, without taking a task (a crash loop)."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    child.close()
    parent.setblocking(False)
    return ExecutorProcess(pid, parent)


def reap_until_empty(pool: Pool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pool.children and time.monotonic() < deadline:
        pool.reap(time.monotonic())
        time.sleep(0.01)
    assert not pool.children


def test_a_crash_loop_backs_off_exponentially():
    pool = Pool(1, fork_broken, selectors.DefaultSelector(), Metrics())
    delays = []
    for _ in range(3):
        pool.fill(max(time.monotonic(), pool.respawn_at))
        assert len(pool.children) == 1
        reap_until_empty(pool)
        delays.append(round(pool.respawn_at - time.monotonic(), 1))
    assert delays[0] < delays[1] < delays[2], delays
    pool.fill(time.monotonic())
    assert not pool.children, "no fork before the backoff is over"


def test_a_refused_fork_backs_off_and_is_reported_instead_of_crashing():
    metrics = Metrics()

    def refuse() -> ExecutorProcess:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    pool = Pool(2, refuse, selectors.DefaultSelector(), metrics)
    pool.fill(time.monotonic())
    assert pool.fork_error is not None and "temporarily unavailable" in pool.fork_error
    assert pool.respawn_at > time.monotonic()
    assert b"pgflow_executor_fork_failures_total 1.0" in metrics.render()
