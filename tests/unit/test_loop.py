"""The supervisor's loop with its collaborators faked: signals are pushed into
the queue and tick() is called, with no fork and no database."""

from __future__ import annotations

import collections
import signal
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from executor import protocol
from supervisor.answers import PendingAnswers
from supervisor.metrics import Metrics
from supervisor.pool import Ended
from supervisor.rounds import Rounds
from supervisor.sdnotify import Notifier
from supervisor.settings import Settings
from supervisor.supervisor import StopMode, Supervisor
from supervisor.tasks import HeldTask


def task(task_id: int, timeout_ms: int = 1000) -> HeldTask:
    return HeldTask(task_id, 7, str(uuid.uuid4()), "f", "s", 0, 1, timeout_ms, 0.0, b"frame", 0.0)


@dataclass
class FakePool:
    size: int = 2
    idle: int = 2
    running: list[HeldTask] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    returned: list[HeldTask] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    respawn_at: float = 0.0
    fork_error: str | None = None
    children: dict[int, Any] = field(default_factory=dict)

    def fill(self, now: float) -> None: ...
    def reap(self, now: float) -> None: ...
    def check_deadlines(self, now: float) -> None: ...

    def take(self) -> tuple[list[Ended], list[HeldTask]]:
        ended, self.ended = self.ended, []
        returned, self.returned = self.returned, []
        return ended, returned

    def dispatch(self, buffer: collections.deque[HeldTask], now: float) -> list[HeldTask]:
        sent = []
        while buffer and self.idle:
            sent.append(buffer.popleft())
            self.idle -= 1
        self.running += sent
        return sent

    def serving(self) -> list[object]:
        return [object()] * self.size

    def busy(self) -> list[object]:
        return [object()] * len(self.running)

    def capacity(self) -> int:
        return self.idle

    def counts(self) -> tuple[int, int, int]:
        return self.idle, len(self.running), 0

    def next_deadline(self) -> float | None:
        return None

    def typical_task_seconds(self) -> float | None:
        return 0.001

    def scale(self, delta: int) -> None:
        self.calls.append(f"scale {delta:+d}")
        self.size += delta

    def retire_all(self, reason: str) -> None:
        self.calls.append(f"retire {reason}")

    def kill_running(self, reason: str, now: float) -> list[HeldTask]:
        self.calls.append(f"kill {reason}")
        killed, self.running = self.running, []
        return killed

    def stop_all(self, timeout: float) -> None: ...


@dataclass
class FakeDatabase:
    up: bool = True
    idle: bool = True
    ready: bool = True
    poll_interval: float = 10.0
    rounds: list[list[Any]] = field(default_factory=list)

    def service(self, now: float) -> None: ...
    def next_wakeup(self) -> float | None:
        return None

    def send(self, transactions: list[Any]) -> None:
        self.rounds.append(transactions)

    def close(self) -> None: ...


class FakeSignals:
    def __init__(self) -> None:
        self.pending: collections.deque[signal.Signals] = collections.deque()

    def install(self) -> None: ...
    def uninstall(self) -> None: ...
    def register(self, selector: Any) -> None: ...
    def close(self) -> None: ...

    def pop_all(self) -> list[signal.Signals]:
        events = list(self.pending)
        self.pending.clear()
        return events


class FakeSelector:
    """Returns at once, remembering how long the loop asked to sleep."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def select(self, timeout: float) -> list[Any]:
        self.timeouts.append(timeout)
        return []

    def close(self) -> None: ...


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Supervisor:
    settings = Settings(database_url="postgresql://unused/x", flows="f", processes=2,
                        prefetch=4, shutdown_timeout=30, metrics_port=0)
    metrics = Metrics()
    buffer: collections.deque[HeldTask] = collections.deque()
    pool = FakePool()
    clock = Clock()
    answers = PendingAnswers(metrics, 500, clock=clock)
    rounds = Rounds(settings, ["f"], metrics, buffer, lambda: list(buffer))
    supervisor = Supervisor(settings, {}, metrics=metrics, selector=FakeSelector(),  # type: ignore[arg-type]
                            signals=FakeSignals(), pool=pool, database=FakeDatabase(),
                            rounds=rounds, answers=answers, buffer=buffer,
                            notifier=Notifier(None), http=None, clock=clock)
    supervisor.start()
    return supervisor


def statements(transactions: list[Any]) -> list[str]:
    """The worker statements a round sends, by the name of their .sql file."""
    from pgflow import queries

    names = {}
    for name in ("claim", "next_due", "complete", "fail", "release", "heartbeat",
                 "requeue_expired", "register_worker", "stop_worker", "queue_stats",
                 "notification_queue_usage"):
        names[queries.worker(name).encode()] = name
    return [names.get(s.sql, s.sql.decode()[:20]) for tx in transactions for s in tx.statements]


def test_the_first_round_registers_claims_and_reads_stats(loop: Supervisor) -> None:
    loop.rounds.on_database_up()
    loop.tick()
    (first,) = loop.database.rounds  # type: ignore[attr-defined]
    assert statements(first)[:1] == ["register_worker"]
    assert "claim" in statements(first) and "queue_stats" in statements(first)


def test_claims_ask_for_idle_executors_plus_prefetch_and_none_when_not_dirty(loop: Supervisor) -> None:
    loop.rounds.dirty = True
    assert loop._claim_size() == 2 + 4
    loop.rounds.dirty = False
    assert loop._claim_size() == 0, "nothing may be claimable: wait for a notification"


def test_prefetch_0_with_every_executor_busy_does_not_claim(loop: Supervisor) -> None:
    """--prefetch 0 used to send claims of limit 0 about 20 times a second."""
    loop.settings.prefetch = 0
    loop.pool.idle = 0  # type: ignore[attr-defined]
    loop.rounds.dirty = True
    assert loop._claim_size() == 0


def test_an_answer_is_written_in_the_next_round_and_claims_with_it(loop: Supervisor) -> None:
    held = task(1)
    answer = protocol.Answer({"task_id": 1, "ok": True}, b'{"x": 1}')
    loop.pool.ended.append(Ended(held, "success", 0.01, answer))  # type: ignore[attr-defined]
    loop.rounds.dirty = False
    loop.tick()
    names = statements(loop.database.rounds[-1])  # type: ignore[attr-defined]
    assert "complete" in names
    assert "claim" in names, "completing a step may ready its dependents: claim in the same round"


def test_tasks_an_executor_never_started_go_back_to_the_front_of_the_buffer(loop: Supervisor) -> None:
    loop.pool.idle = 0  # type: ignore[attr-defined]
    loop.buffer.extend([task(3), task(4)])
    loop.pool.returned += [task(1), task(2)]  # type: ignore[attr-defined]
    loop.tick()
    assert [t.task_id for t in loop.buffer] == [1, 2, 3, 4]


def test_term_drains_gives_back_the_buffer_and_stops_when_nothing_runs(loop: Supervisor) -> None:
    loop.pool.idle = 0  # type: ignore[attr-defined]
    loop.pool.running = [task(9)]  # type: ignore[attr-defined]
    loop.buffer.extend([task(1), task(2)])
    loop.signals.pending.append(signal.SIGTERM)
    assert loop.tick() is True, "a running task may finish"
    assert loop.stop_mode is StopMode.DRAIN
    assert "retire shutdown" in loop.pool.calls  # type: ignore[attr-defined]
    assert not loop.buffer
    assert "release" in statements(loop.database.rounds[-1])  # type: ignore[attr-defined]
    loop.pool.running = []  # type: ignore[attr-defined]
    assert loop.tick() is False


def test_a_second_term_stops_at_once_and_gives_running_tasks_back(loop: Supervisor) -> None:
    loop.pool.running = [task(9)]  # type: ignore[attr-defined]
    loop.signals.pending.extend([signal.SIGTERM, signal.SIGTERM])
    assert loop.tick() is False
    assert loop.stop_mode is StopMode.FAST
    assert "kill shutdown" in loop.pool.calls  # type: ignore[attr-defined]
    assert [t.task_id for t in loop.rounds.releases + loop.rounds._releasing] == [9]


def test_the_drain_ends_at_the_shutdown_timeout(loop: Supervisor) -> None:
    loop.pool.running = [task(9)]  # type: ignore[attr-defined]
    loop.signals.pending.append(signal.SIGTERM)
    assert loop.tick() is True
    loop.clock.now += 31  # type: ignore[attr-defined]
    assert loop.tick() is False
    assert "kill shutdown" in loop.pool.calls  # type: ignore[attr-defined]


@pytest.mark.parametrize("sig, mode", [(signal.SIGHUP, StopMode.RELOAD), (signal.SIGINT, StopMode.FAST),
                                       (signal.SIGQUIT, StopMode.FAST)])
def test_signals_pick_the_stop_mode(loop: Supervisor, sig: signal.Signals, mode: StopMode) -> None:
    loop.signals.pending.append(sig)
    loop.tick()
    assert loop.stop_mode is mode


def test_ttin_and_ttou_resize_the_pool(loop: Supervisor) -> None:
    loop.signals.pending.extend([signal.SIGTTIN, signal.SIGTTIN, signal.SIGTTOU])
    loop.tick()
    assert loop.pool.calls == ["scale +1", "scale +1", "scale -1"]  # type: ignore[attr-defined]


def test_readyz_says_not_ready_while_stopping_or_without_the_database(loop: Supervisor) -> None:
    assert loop.readyz()[0] == 200
    loop.database.ready = False  # type: ignore[attr-defined]
    assert loop.readyz()[0] == 503
    loop.database.ready = True  # type: ignore[attr-defined]
    loop.pool.fork_error = "EAGAIN"  # type: ignore[attr-defined]
    assert loop.readyz()[0] == 503, "executors cannot be started"


def test_answers_refused_by_a_statement_error_wait_before_going_again(loop: Supervisor) -> None:
    """A batch that keeps failing (not for one row's data) must not spin the loop."""
    from supervisor.pgconn import StatementError

    answer = protocol.Answer({"task_id": 1, "ok": True}, b"1")
    loop.pool.ended.append(Ended(task(1), "success", 0.01, answer))  # type: ignore[attr-defined]
    loop.tick()
    complete = next(s for tx in loop.database.rounds[-1] for s in tx.statements  # type: ignore[attr-defined]
                    if b"complete_tasks" in s.sql)
    complete.on_result(StatementError("57014", "canceling statement due to statement timeout"))
    assert loop.answers.waiting and not loop.answers.sendable()
    held_until = loop.answers.held_until()
    assert held_until is not None
    loop.rounds.dirty = False
    loop.timers.clear("poll")
    loop.timers.clear("heartbeat")
    rounds = len(loop.database.rounds)  # type: ignore[attr-defined]
    loop.tick()
    assert loop.selector.timeouts[-1] > 0.05, "the loop sleeps until the answers may go again"  # type: ignore[attr-defined]
    assert len(loop.database.rounds) == rounds, "and sends nothing meanwhile"  # type: ignore[attr-defined]
    loop.clock.now = held_until  # type: ignore[attr-defined]
    loop.tick()
    assert "complete" in statements(loop.database.rounds[rounds]), "then they go"  # type: ignore[attr-defined]


def test_a_failing_claim_is_retried_a_second_later_not_at_once(loop: Supervisor) -> None:
    from supervisor.pgconn import StatementError

    loop.rounds.dirty = True
    loop.tick()
    claim = next(s for tx in loop.database.rounds[-1] for s in tx.statements  # type: ignore[attr-defined]
                 if b"claim_tasks" in s.sql)
    claim.on_result(StatementError("XX000", "boom"))
    assert loop.rounds.dirty is False
    assert loop.rounds.next_due is not None and loop.rounds.next_due > 0


def test_polls_come_sooner_once_notifications_cannot_arrive(loop: Supervisor) -> None:
    loop.tick()
    assert loop.timers.get("poll") == loop.clock() + 10.0
    loop.database.poll_interval = 0.5  # type: ignore[misc]  # a probe notification was lost
    loop.tick()
    assert loop.timers.get("poll") == loop.clock() + 0.5
    loop.rounds.dirty = False
    sent = len(loop.database.rounds)  # type: ignore[attr-defined]
    loop.clock.now += 0.5  # type: ignore[attr-defined]
    loop.tick()
    assert "claim" in statements(loop.database.rounds[sent]), "the poll claims"  # type: ignore[attr-defined]
    assert loop.timers.get("poll") == loop.clock() + 0.5


def test_tasks_the_heartbeat_reports_lost_are_dropped_and_their_handlers_stopped() -> None:
    """Without notifications (a transaction pooler) a cancel reaches running
    handlers only through the heartbeat."""
    settings = Settings(database_url="postgresql://unused/x", flows="f", metrics_port=0)
    buffer: collections.deque[HeldTask] = collections.deque([task(1), task(2)])
    stopped: list[set[int]] = []
    rounds = Rounds(settings, ["f"], Metrics(), buffer, lambda: list(buffer),
                    on_lost=stopped.append)
    rounds._drop_lost({2, 3})
    assert [t.task_id for t in buffer] == [1]
    assert stopped == [{2, 3}], "the pool is asked to stop the handlers running 2 and 3"
