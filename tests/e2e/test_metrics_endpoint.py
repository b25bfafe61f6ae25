"""/metrics, /healthz and /readyz of a real supervisor under work."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request

import pytest

from pgflow import Client


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match[3])
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def metrics_supervisor(dsn, start_supervisor):
    port = free_port()
    supervisor = start_supervisor(dsn, "--metrics-port", str(port))
    supervisor.wait_for_log(f"metrics on 127.0.0.1:{port}")
    # The loop connects to Postgres without blocking: ready once it has.
    deadline = time.monotonic() + 15
    while scrape(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    return supervisor, port


def test_metrics_move_with_successes_failures_and_timeouts(dsn, metrics_supervisor, tmp_path):
    supervisor, port = metrics_supervisor
    status, before = scrape(port)
    assert status == 200
    assert sample(before, "pgflow_executor_processes", state="idle") == 2
    assert sample(before, "pgflow_database_connected") == 1
    assert 0 <= sample(before, "pgflow_notification_queue_usage") < 0.01

    with Client(dsn) as client:
        ok = [client.start_flow("e2e_diamond", {"n": i}) for i in range(5)]
        failed = client.start_flow("e2e_fail", 1)
        timed_out = client.start_flow("e2e_sleepy", {"seconds": 60})
        for run_id in [*ok, failed, timed_out]:
            client.wait(run_id, timeout=20)

    _, after = scrape(port)
    diamond = {"flow": "e2e_diamond", "step": "d"}
    assert sample(after, "pgflow_tasks_completed_total", **diamond) == 5
    assert sample(after, "pgflow_tasks_claimed_total", **diamond) == 5
    assert sample(after, "pgflow_task_duration_seconds_count", outcome="success", **diamond) == 5
    assert sample(after, "pgflow_task_queue_wait_seconds_count", **diamond) == 5
    assert sample(after, "pgflow_run_duration_seconds_count", flow="e2e_diamond",
                  status="completed") == 5

    failing = {"flow": "e2e_fail", "step": "always_fails"}
    assert sample(after, "pgflow_tasks_failed_total", reason="error", **failing) == 2
    assert sample(after, "pgflow_tasks_retried_total", **failing) == 1
    assert sample(after, "pgflow_run_duration_seconds_count", flow="e2e_fail",
                  status="failed") == 1

    sleepy = {"flow": "e2e_sleepy", "step": "nap"}
    assert sample(after, "pgflow_tasks_timed_out_total", **sleepy) == 1
    assert sample(after, "pgflow_tasks_failed_total", reason="timeout", **sleepy) == 1
    assert sample(after, "pgflow_executor_restarts_total", reason="timeout") == 1
    assert sample(after, "pgflow_db_roundtrip_seconds_count", operation="round") >= 1
    assert sample(after, "pgflow_wakeups_total", source="notification") >= 1
    assert 'version="' in after and "pgflow_supervisor_info" in after


def test_health_and_readiness(metrics_supervisor):
    _, port = metrics_supervisor
    assert scrape(port, "/healthz") == (200, "ok\n")
    assert scrape(port, "/readyz") == (200, "ready\n")
    assert scrape(port, "/nope")[0] == 404
