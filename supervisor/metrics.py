"""Prometheus metrics of the supervisor, in a registry of their own.

The supervisor loop calls the methods of `Metrics` ("a task finished", "the
pool now has 3 idle children") and never touches prometheus_client itself.
Everything is collected in the parent: children report durations over the
pipe. Labels are bounded: flow, step, outcome, reason, state, operation,
source and status take values from registered flows or from the fixed sets
below, never run ids.

`/metrics` is served by `supervisor.http.HttpEndpoint` from the loop itself
(no thread: the parent forks children), with `Metrics.render()` as the body.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

METRIC_PREFIX = "pgflow_"
CONTENT_TYPE = CONTENT_TYPE_LATEST

Outcome = Literal["success", "error", "timeout", "crash"]
RestartReason = Literal["timeout", "crash", "recycle", "scale", "cancel"]
WakeupSource = Literal["notification", "poll", "timer"]

OUTCOMES: tuple[str, ...] = ("success", "error", "timeout", "crash")
FAILURE_REASONS: tuple[str, ...] = ("error", "timeout", "crash")
RESTART_REASONS: tuple[str, ...] = ("timeout", "crash", "recycle", "scale", "cancel")
WAKEUP_SOURCES: tuple[str, ...] = ("notification", "poll", "timer")

# Seconds. Tasks and queue waits span a no-op handler (1 ms) to the longest
# sensible timeout (1 h); runs may take a day; database round trips 0.1 ms to 5 s.
TASK_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
)  # fmt: skip
QUEUE_WAIT_BUCKETS = TASK_DURATION_BUCKETS
RUN_DURATION_BUCKETS = (
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
    900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
)  # fmt: skip
DB_ROUNDTRIP_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

# The sample names each metric type exposes, after the family name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


class Metrics:
    """Every metric the supervisor exports, behind methods the loop calls."""

    def __init__(self, info: Mapping[str, str] | None = None, *, start_time: float | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._queue_flows: set[str] = set()  # flows with queue gauges, so vanished ones drop to 0
        self._task_duration = Histogram(
            "pgflow_task_duration_seconds",
            "Time a child spent executing a task (parent's view: dispatch to answer, kill or crash), "
            "by outcome: success, error, timeout, crash.",
            ["flow", "step", "outcome"],
            buckets=TASK_DURATION_BUCKETS,
            registry=r,
        )
        self._queue_wait = Histogram(
            "pgflow_task_queue_wait_seconds",
            "Time from a task becoming visible (claimable) to being handed to a child.",
            ["flow", "step"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self._claimed = Counter(
            "pgflow_tasks_claimed",
            "Tasks claimed from Postgres by this supervisor.",
            ["flow", "step"],
            registry=r,
        )
        self._completed = Counter(
            "pgflow_tasks_completed", "Task attempts that succeeded.", ["flow", "step"], registry=r
        )
        self._failed = Counter(
            "pgflow_tasks_failed",
            "Task attempts that failed, by reason: error (handler raised), timeout (killed at its "
            "deadline), crash (the child died). Retried attempts count too.",
            ["flow", "step", "reason"],
            registry=r,
        )
        self._timed_out = Counter(
            "pgflow_tasks_timed_out", "Task attempts killed at their deadline.", ["flow", "step"], registry=r
        )
        self._retried = Counter(
            "pgflow_tasks_retried",
            "Failed task attempts scheduled for another attempt.",
            ["flow", "step"],
            registry=r,
        )
        self._run_duration = Histogram(
            "pgflow_run_duration_seconds",
            "Start to end of runs whose last task this supervisor finished, by final status.",
            ["flow", "status"],
            buckets=RUN_DURATION_BUCKETS,
            registry=r,
        )
        self._restarts = Counter(
            "pgflow_executor_restarts",
            "Executor children replaced, by reason: timeout (killed at a deadline), crash (died "
            "unexpectedly), recycle (max tasks or memory reached), scale (pool resized), cancel "
            "(killed because its task's run was cancelled, or its claim was lost).",
            ["reason"],
            registry=r,
        )
        self._fork_failures = Counter(
            "pgflow_executor_fork_failures",
            "Executors that could not be started (fork or socketpair refused, e.g. a full pids "
            "cgroup); the supervisor backs off and tries again.",
            registry=r,
        )
        self._late_answers = Counter(
            "pgflow_late_answers_ignored",
            "Answers Postgres rejected because the attempt had expired, been requeued or cancelled.",
            registry=r,
        )
        self._wakeups = Counter(
            "pgflow_wakeups",
            "Loop wake-ups that led to a claim, by source: notification (LISTEN), poll (fallback "
            "poll), timer (a delayed task became visible).",
            ["source"],
            registry=r,
        )
        self._executors = Gauge(
            "pgflow_executor_processes", "Executor children by state: idle, busy.", ["state"], registry=r
        )
        self._in_flight = Gauge(
            "pgflow_tasks_in_flight",
            "Claimed tasks held by this supervisor: running in a child, or buffered (prefetched).",
            ["state"],
            registry=r,
        )
        self._queue_depth = Gauge(
            "pgflow_queue_depth",
            "Tasks ready to be claimed now, per flow (read from Postgres; the same for every supervisor).",
            ["flow"],
            registry=r,
        )
        self._queue_oldest_age = Gauge(
            "pgflow_queue_oldest_age_seconds",
            "Age of the oldest ready task per flow: now minus its visible_at (0 when none is ready).",
            ["flow"],
            registry=r,
        )
        self._db_roundtrip = Histogram(
            "pgflow_db_roundtrip_seconds",
            "Database round-trip time per operation (claim, complete, fail, release, heartbeat, ...).",
            ["operation"],
            buckets=DB_ROUNDTRIP_BUCKETS,
            registry=r,
        )
        self._db_errors = Counter(
            "pgflow_db_errors", "Database operations that raised, per operation.", ["operation"], registry=r
        )
        self._notify_queue = Gauge(
            "pgflow_notification_queue_usage",
            "Share of Postgres' notification queue in use (pg_notification_queue_usage(), 0 to 1). "
            "A listener that stopped reading pins it; when it is full, every commit that notifies "
            "fails.",
            registry=r,
        )
        self._db_connected = Gauge(
            "pgflow_database_connected",
            "1 while the supervisor's connections to Postgres are up.",
            registry=r,
        )
        self._info = Info(
            "pgflow_supervisor", "Version and settings of this supervisor (value is always 1).", registry=r
        )
        self._start_time = Gauge(
            "pgflow_supervisor_start_time_seconds", "Unix time the supervisor started.", registry=r
        )

        # Plain tallies for the worker's row in pgflow.workers (`pgflow top`).
        self.attempts_succeeded = 0
        self.attempts_failed = 0
        self.executors_busy = 0
        self.executors_total = 0
        self.tasks_buffered = 0
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

        self._info.info({str(k): str(v) for k, v in (info or {}).items()})
        self._start_time.set(time.time() if start_time is None else start_time)
        # Known label values start at 0, so rate() and alerts see the first event.
        for reason in RESTART_REASONS:
            self._at(self._restarts, reason)
        for source in WAKEUP_SOURCES:
            self._at(self._wakeups, source)
        self.set_executors(0, 0)
        self.set_in_flight(0, 0)
        self._db_connected.set(0)

    def _at(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, cached: labels() takes a lock and builds its
        key on every call, and the loop records several series per task."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- tasks -----------------------------------------------------------

    def declare_flow(self, flow: str, steps: Iterable[str]) -> None:
        """Start a served flow's series at 0, so the first failure shows in rate() and the
        dashboard's flow list has every flow before it has work (call once per flow at start)."""
        self._at(self._queue_depth, flow).set(0)
        self._at(self._queue_oldest_age, flow).set(0)
        self._queue_flows.add(flow)
        for step in steps:
            for counter in (self._claimed, self._completed, self._timed_out, self._retried):
                self._at(counter, flow, step)
            for reason in FAILURE_REASONS:
                self._at(self._failed, flow, step, reason)

    def tasks_claimed(self, flow: str, step: str, n: int = 1) -> None:
        self._at(self._claimed, flow, step).inc(n)

    def task_started(self, flow: str, step: str, queue_wait_s: float) -> None:
        """A task was handed to a child, `queue_wait_s` after it became visible."""
        self._at(self._queue_wait, flow, step).observe(max(queue_wait_s, 0.0))

    def task_finished(self, flow: str, step: str, outcome: Outcome, duration_s: float) -> None:
        _check("task outcome", outcome, OUTCOMES)
        self._at(self._task_duration, flow, step, outcome).observe(max(duration_s, 0.0))
        if outcome == "success":
            self.attempts_succeeded += 1
            self._at(self._completed, flow, step).inc()
            return
        self.attempts_failed += 1
        self._at(self._failed, flow, step, outcome).inc()
        if outcome == "timeout":
            self._at(self._timed_out, flow, step).inc()

    def task_retried(self, flow: str, step: str) -> None:
        self._at(self._retried, flow, step).inc()

    def run_finished(self, flow: str, status: str, duration_s: float) -> None:
        self._at(self._run_duration, flow, status).observe(max(duration_s, 0.0))

    def late_answers_ignored(self, n: int) -> None:
        if n > 0:
            self._late_answers.inc(n)

    # -- loop and pool ---------------------------------------------------

    def executor_restarted(self, reason: RestartReason) -> None:
        _check("restart reason", reason, RESTART_REASONS)
        self._at(self._restarts, reason).inc()

    def executor_fork_failed(self) -> None:
        self._fork_failures.inc()

    def wakeup(self, source: WakeupSource) -> None:
        _check("wake-up source", source, WAKEUP_SOURCES)
        self._at(self._wakeups, source).inc()

    def set_executors(self, idle: int, busy: int) -> None:
        self.executors_busy, self.executors_total = busy, idle + busy
        self._at(self._executors, "idle").set(idle)
        self._at(self._executors, "busy").set(busy)

    def set_in_flight(self, running: int, buffered: int) -> None:
        self.tasks_buffered = buffered
        self._at(self._in_flight, "running").set(running)
        self._at(self._in_flight, "buffered").set(buffered)

    def set_queue(self, depths: Mapping[str, tuple[int, float]]) -> None:
        """Per flow: (ready tasks, age in seconds of the oldest one). Flows left out drop to 0."""
        for flow in self._queue_flows - depths.keys():
            self._at(self._queue_depth, flow).set(0)
            self._at(self._queue_oldest_age, flow).set(0)
        for flow, (depth, oldest_age_s) in depths.items():
            self._at(self._queue_depth, flow).set(depth)
            self._at(self._queue_oldest_age, flow).set(max(oldest_age_s, 0.0))
        self._queue_flows |= depths.keys()

    # -- database --------------------------------------------------------

    def db_roundtrip(self, operation: str, seconds: float) -> None:
        self._at(self._db_roundtrip, operation).observe(seconds)

    @contextlib.contextmanager
    def db_timer(self, operation: str) -> Iterator[None]:
        """Time the block as one round trip of `operation`; a block that raises counts as an error."""
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self._at(self._db_errors, operation).inc()
            raise
        finally:
            self._at(self._db_roundtrip, operation).observe(time.perf_counter() - started)

    def db_error(self, operation: str) -> None:
        self._at(self._db_errors, operation).inc()

    def set_notification_queue_usage(self, share: float) -> None:
        self._notify_queue.set(share)

    def set_database_connected(self, connected: bool) -> None:
        self._db_connected.set(1 if connected else 0)

    # -- exposition ------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def metric_names(self) -> set[str]:
        """Every sample name `render()` can expose, whether or not a labelled series exists yet."""
        created = _created_series_enabled()
        names = set()
        for family in self.registry.collect():
            for suffix in _SUFFIXES[family.type]:
                if suffix != "_created" or created:
                    names.add(family.name + suffix)
        return names

    def exports(self, name: str) -> bool:
        """Whether a name referenced in PromQL (a dashboard, an alert) is one this supervisor exports."""
        return name in self.metric_names()


def _check(what: str, value: str, allowed: tuple[str, ...]) -> None:
    # Label values come from fixed sets: a typo must fail in tests, not add a series.
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def _created_series_enabled() -> bool:
    """prometheus_client may be told (PROMETHEUS_DISABLE_CREATED_SERIES) not to expose `_created`."""
    probe = Counter("probe", "", registry=CollectorRegistry())
    return any(sample.name.endswith("_created") for family in probe.collect() for sample in family.samples)
