"""The pool with real forked processes, without a database."""

from __future__ import annotations

import os
import selectors
import socket
import time

from supervisor.children import ExecutorProcess
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


def reap_until(pool: Pool, count: int, timeout: float = 5.0) -> list:
    exited, deadline = [], time.monotonic() + timeout
    while len(exited) < count and time.monotonic() < deadline:
        exited += pool.reap(time.monotonic())
        time.sleep(0.01)
    return exited


def test_a_crash_loop_backs_off_exponentially():
    pool = Pool(1, fork_broken, selectors.DefaultSelector(), lambda child, answers: None)
    delays = []
    for _ in range(3):
        now = time.monotonic()
        assert pool.fill(max(now, pool.respawn_at)) == 1
        (exited,) = reap_until(pool, 1)
        assert exited[1] == "exited with code 3"
        delays.append(round(pool.respawn_at - time.monotonic(), 1))
    assert delays[0] < delays[1] < delays[2], delays
    assert pool.fill(time.monotonic()) == 0, "no fork before the backoff is over"
