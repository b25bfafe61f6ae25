"""Pool.dispatch: which executor gets which buffered task. Idle executors
first; behind a running task only when the task and everything already
queued there are short; the least loaded such executor; never past depth;
the buffer's order kept (a task that cannot go yet holds the ones behind)."""

from __future__ import annotations

import collections
import selectors
from dataclasses import dataclass, field

import pytest

from supervisor.metrics import Metrics
from supervisor.pool import Pool
from supervisor.tasks import HeldTask


@dataclass(eq=False)
class FakeExecutor:
    pid: int
    serving: bool = True
    fd: int = -1  # the pool then leaves the selector alone
    tasks: collections.deque[HeldTask] = field(default_factory=collections.deque)

    def send(self, task: HeldTask, now: float, kill_grace: float) -> None:
        self.tasks.append(task)

    def flush(self) -> None:
        pass


def task(n: int, step: str) -> HeldTask:
    return HeldTask(n, 1, "run", "f", step, 0, 1, 1000, 0.0, b"", 0.0)


def make_pool(executors: int, depth: int) -> tuple[Pool, list[FakeExecutor]]:
    pool = Pool(executors, spawn=lambda: None, selector=selectors.DefaultSelector(),  # type: ignore[arg-type, return-value]
                metrics=Metrics(), depth=depth)
    pool.pace.learn("f", "quick", 0.001)
    pool.pace.learn("f", "slow", 1.0)
    children = [FakeExecutor(pid) for pid in range(1, executors + 1)]
    pool.children = {child.pid: child for child in children}  # type: ignore[misc]
    return pool, children


def ids(child: FakeExecutor) -> list[int]:
    return [t.task_id for t in child.tasks]


@pytest.mark.parametrize("step", ["quick", "slow"])
def test_idle_executors_take_one_task_each_first(step: str) -> None:
    pool, children = make_pool(3, depth=4)
    buffer = collections.deque(task(n, step) for n in range(3))
    sent = pool.dispatch(buffer, 0.0)
    assert [t.task_id for t in sent] == [0, 1, 2]
    assert [ids(c) for c in children] == [[0], [1], [2]]


def test_short_tasks_queue_behind_short_ones_on_the_least_loaded_up_to_depth() -> None:
    pool, children = make_pool(2, depth=3)
    children[0].tasks.extend([task(90, "quick"), task(91, "quick")])
    children[1].tasks.append(task(92, "quick"))
    buffer = collections.deque(task(n, "quick") for n in range(5))
    pool.dispatch(buffer, 0.0)
    assert ids(children[1]) == [92, 0, 2]
    assert ids(children[0]) == [90, 91, 1], "a tie goes to the first executor"
    assert [t.task_id for t in buffer] == [3, 4], "both at depth: the rest wait in the buffer"


def test_nothing_queues_behind_a_long_task_and_a_long_task_queues_nowhere() -> None:
    pool, children = make_pool(2, depth=4)
    children[0].tasks.append(task(90, "slow"))
    children[1].tasks.append(task(91, "quick"))
    buffer = collections.deque([task(0, "quick"), task(1, "slow"), task(2, "quick")])
    sent = pool.dispatch(buffer, 0.0)
    assert [t.task_id for t in sent] == [0]
    assert ids(children[0]) == [90]
    assert ids(children[1]) == [91, 0]
    assert [t.task_id for t in buffer] == [1, 2], "the long task holds its place at the head"


def test_an_executor_that_is_not_serving_gets_nothing() -> None:
    pool, children = make_pool(2, depth=4)
    children[0].serving = False
    buffer = collections.deque(task(n, "quick") for n in range(3))
    pool.dispatch(buffer, 0.0)
    assert ids(children[0]) == []
    assert ids(children[1]) == [0, 1, 2]


def test_depth_one_never_queues() -> None:
    pool, children = make_pool(1, depth=1)
    children[0].tasks.append(task(90, "quick"))
    buffer = collections.deque([task(0, "quick")])
    assert pool.dispatch(buffer, 0.0) == []
    assert len(buffer) == 1
