"""A fault the chaos soak (bench/chaos.py) found in the pool, with a real
forked process and no database (like test_pool.py)."""

from __future__ import annotations

import os
import selectors
import socket
import time
from pathlib import Path

from executor import protocol
from supervisor.executors import ExecutorProcess
from supervisor.metrics import Metrics
from supervisor.pool import Pool
from supervisor.tasks import HeldTask


def held(task_id: int) -> HeldTask:
    frame = protocol.encode_request(task_id, 7, b"00000000-0000-0000-0000-000000000001", b"f",
                                    b"s", task_id, 1, 1000, False, b"null")
    return HeldTask(task_id, 7, "00000000-0000-0000-0000-000000000001", "f", "s", task_id, 1,
                    1000, 0.0, frame, time.monotonic())


def fork_answers_once_then_exits() -> ExecutorProcess:
    """An executor that answers its first task, then dies (os._exit(13), as a
    handler of the next task might) without reading anything else."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent.close()
        decoder = protocol.FrameDecoder()
        bodies: list[bytes] = []
        while not bodies:
            bodies = decoder.feed(child.recv(65536))
        task = protocol.decode_request(bodies[0])
        child.sendall(protocol.encode_answer({"task_id": task.task_id, "ok": True}, b"42"))
        os._exit(13)
    child.close()
    parent.setblocking(False)
    return ExecutorProcess(pid, parent)


def zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")


def test_an_answer_sent_just_before_the_executor_died_is_not_lost():
    """Found by the soak: task N of a map answered, its executor then died in
    task N+1 (a planned os._exit), and the supervisor failed task N with
    "Executor process ... exited with code 13 while running this task",
    while task N+1 went back to the buffer uncharged. Writing the next task
    to the dead executor failed (EPIPE), which marked the socket at EOF, so
    the answer waiting in it was never read."""
    pool = Pool(1, fork_answers_once_then_exits, selectors.DefaultSelector(), Metrics())
    pool.fill(time.monotonic())
    (executor,) = pool.children.values()
    executor.send(held(1), time.monotonic(), 0.5)
    executor.flush()
    deadline = time.monotonic() + 10
    while not zombie(executor.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    executor.send(held(2), time.monotonic(), 0.5)  # the loop hands it the next task
    executor.flush()
    pool.reap(time.monotonic())
    ended, _ = pool.take()
    assert [(e.task.task_id, e.outcome) for e in ended][:1] == [(1, "success")]
