"""Each Metrics method moves the samples a dashboard or an alert reads."""

from __future__ import annotations

import contextlib

import pytest

from supervisor.metrics import METRIC_PREFIX, Metrics


@pytest.fixture
def metrics() -> Metrics:
    return Metrics({"version": "0.1.0", "processes": "4", "hostname": "vm1"}, start_time=1700000000.0)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_successful_task_counts_completed_and_observes_duration(metrics: Metrics) -> None:
    metrics.task_finished("etl", "load", "success", 0.2)
    metrics.task_finished("etl", "load", "success", 3.0)

    assert value(metrics, "pgflow_tasks_completed_total", flow="etl", step="load") == 2
    success = {"flow": "etl", "step": "load", "outcome": "success"}
    assert value(metrics, "pgflow_task_duration_seconds_count", **success) == 2
    assert value(metrics, "pgflow_task_duration_seconds_sum", **success) == 3.2
    assert value(metrics, "pgflow_task_duration_seconds_bucket", **success, le="0.25") == 1
    assert value(metrics, "pgflow_task_duration_seconds_bucket", **success, le="5.0") == 2
    assert value(metrics, "pgflow_tasks_failed_total", flow="etl", step="load", reason="error") is None


@pytest.mark.parametrize("outcome", ["error", "timeout", "crash"])
def test_failed_task_counts_failure_by_reason(metrics: Metrics, outcome: str) -> None:
    metrics.task_finished("etl", "load", outcome, 1.5)  # type: ignore[arg-type]

    assert value(metrics, "pgflow_tasks_failed_total", flow="etl", step="load", reason=outcome) == 1
    assert value(metrics, "pgflow_task_duration_seconds_count", flow="etl", step="load", outcome=outcome) == 1
    assert value(metrics, "pgflow_tasks_completed_total", flow="etl", step="load") is None
    timed_out = value(metrics, "pgflow_tasks_timed_out_total", flow="etl", step="load")
    assert timed_out == (1 if outcome == "timeout" else None)


def test_unknown_label_values_are_refused(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="task outcome 'oops'"):
        metrics.task_finished("etl", "load", "oops", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="restart reason"):
        metrics.executor_restarted("bored")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wake-up source"):
        metrics.wakeup("telepathy")  # type: ignore[arg-type]


def test_claims_retries_queue_wait_and_runs(metrics: Metrics) -> None:
    metrics.tasks_claimed("etl", "load", 5)
    metrics.tasks_claimed("etl", "load")
    metrics.task_retried("etl", "load")
    metrics.task_started("etl", "load", 0.004)
    metrics.run_finished("etl", "completed", 42.0)

    assert value(metrics, "pgflow_tasks_claimed_total", flow="etl", step="load") == 6
    assert value(metrics, "pgflow_tasks_retried_total", flow="etl", step="load") == 1
    assert value(metrics, "pgflow_task_queue_wait_seconds_bucket", flow="etl", step="load", le="0.005") == 1
    assert value(metrics, "pgflow_task_queue_wait_seconds_bucket", flow="etl", step="load", le="0.0025") == 0
    assert value(metrics, "pgflow_run_duration_seconds_count", flow="etl", status="completed") == 1
    assert value(metrics, "pgflow_run_duration_seconds_sum", flow="etl", status="completed") == 42.0


def test_declared_flows_start_at_zero(metrics: Metrics) -> None:
    metrics.declare_flow("etl", ["extract", "load"])

    assert value(metrics, "pgflow_tasks_completed_total", flow="etl", step="extract") == 0
    assert value(metrics, "pgflow_tasks_failed_total", flow="etl", step="load", reason="crash") == 0
    assert value(metrics, "pgflow_tasks_claimed_total", flow="etl", step="load") == 0
    assert value(metrics, "pgflow_queue_depth", flow="etl") == 0


def test_restarts_wakeups_and_late_answers(metrics: Metrics) -> None:
    assert value(metrics, "pgflow_executor_restarts_total", reason="crash") == 0  # present before any restart
    metrics.executor_restarted("crash")
    metrics.executor_restarted("recycle")
    metrics.executor_restarted("recycle")
    metrics.wakeup("notification")
    metrics.late_answers_ignored(3)
    metrics.late_answers_ignored(0)

    assert value(metrics, "pgflow_executor_restarts_total", reason="crash") == 1
    assert value(metrics, "pgflow_executor_restarts_total", reason="recycle") == 2
    assert value(metrics, "pgflow_executor_restarts_total", reason="timeout") == 0
    assert value(metrics, "pgflow_wakeups_total", source="notification") == 1
    assert value(metrics, "pgflow_wakeups_total", source="poll") == 0
    assert value(metrics, "pgflow_late_answers_ignored_total") == 3


def test_gauges_follow_the_latest_values(metrics: Metrics) -> None:
    metrics.set_executors(idle=3, busy=1)
    metrics.set_executors(idle=1, busy=3)
    metrics.set_in_flight(running=3, buffered=8)
    metrics.set_database_connected(True)

    assert value(metrics, "pgflow_executor_processes", state="idle") == 1
    assert value(metrics, "pgflow_executor_processes", state="busy") == 3
    assert value(metrics, "pgflow_tasks_in_flight", state="running") == 3
    assert value(metrics, "pgflow_tasks_in_flight", state="buffered") == 8
    assert value(metrics, "pgflow_database_connected") == 1
    metrics.set_database_connected(False)
    assert value(metrics, "pgflow_database_connected") == 0


def test_queue_gauges_drop_to_zero_for_flows_that_disappear(metrics: Metrics) -> None:
    metrics.set_queue({"etl": (12, 30.5), "mail": (1, 0.2)})
    metrics.set_queue({"mail": (4, 2.0)})

    assert value(metrics, "pgflow_queue_depth", flow="etl") == 0
    assert value(metrics, "pgflow_queue_oldest_age_seconds", flow="etl") == 0
    assert value(metrics, "pgflow_queue_depth", flow="mail") == 4
    assert value(metrics, "pgflow_queue_oldest_age_seconds", flow="mail") == 2.0


def test_db_timer_observes_round_trips_and_counts_errors(metrics: Metrics) -> None:
    with metrics.db_timer("claim"):
        pass
    with pytest.raises(RuntimeError), metrics.db_timer("complete"):
        raise RuntimeError("connection lost")
    metrics.db_roundtrip("heartbeat", 0.0003)

    assert value(metrics, "pgflow_db_roundtrip_seconds_count", operation="claim") == 1
    assert value(metrics, "pgflow_db_roundtrip_seconds_count", operation="complete") == 1
    assert value(metrics, "pgflow_db_errors_total", operation="complete") == 1
    assert value(metrics, "pgflow_db_errors_total", operation="claim") is None
    assert value(metrics, "pgflow_db_roundtrip_seconds_bucket", operation="heartbeat", le="0.0005") == 1
    assert value(metrics, "pgflow_db_roundtrip_seconds_bucket", operation="heartbeat", le="0.00025") == 0


def test_info_and_start_time(metrics: Metrics) -> None:
    assert value(metrics, "pgflow_supervisor_info", version="0.1.0", processes="4", hostname="vm1") == 1
    assert value(metrics, "pgflow_supervisor_start_time_seconds") == 1700000000.0


def test_render_is_prometheus_text_in_its_own_registry(metrics: Metrics) -> None:
    metrics.task_finished("etl", "load", "success", 0.01)
    text = metrics.render().decode()

    assert 'pgflow_tasks_completed_total{flow="etl",step="load"} 1.0' in text
    assert "# TYPE pgflow_task_duration_seconds histogram" in text
    assert "python_gc" not in text  # the global registry's collectors are not in ours
    assert Metrics().render()  # two instances do not collide on names


def test_metric_names_are_exactly_what_render_exposes(metrics: Metrics) -> None:
    exercise_every_method(metrics)
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in metrics.render().decode().splitlines()
        if line and not line.startswith("#")
    }

    assert exposed == metrics.metric_names()
    assert all(name.startswith(METRIC_PREFIX) for name in exposed)
    assert metrics.exports("pgflow_task_duration_seconds_bucket")
    assert not metrics.exports("pgflow_task_duration_seconds")  # a histogram's family name is no series


def exercise_every_method(metrics: Metrics) -> None:
    """Create at least one series of every metric (used by the dashboard/rules sync test too)."""
    metrics.declare_flow("etl", ["load"])
    metrics.tasks_claimed("etl", "load")
    metrics.task_started("etl", "load", 0.01)
    for outcome in ("success", "error", "timeout", "crash"):
        metrics.task_finished("etl", "load", outcome, 0.5)  # type: ignore[arg-type]
    metrics.task_retried("etl", "load")
    metrics.run_finished("etl", "completed", 3.0)
    metrics.executor_restarted("timeout")
    metrics.late_answers_ignored(1)
    metrics.wakeup("poll")
    metrics.set_executors(1, 1)
    metrics.set_in_flight(1, 0)
    metrics.set_queue({"etl": (1, 1.0)})
    with contextlib.suppress(OSError), metrics.db_timer("claim"):
        raise OSError("boom")  # also creates pgflow_db_errors_total
    metrics.set_database_connected(True)
