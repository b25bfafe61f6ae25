"""A real Prometheus scrapes a real supervisor with the shipped scrape config
and alert rules: every dashboard query returns data, and the alerts fire
when we cause what they describe. Skipped where Prometheus is not installed
(Debian: apt-get install prometheus; CI installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from pgflow import Client
from tests.e2e.test_metrics_endpoint import free_port
from tests.unit.test_dashboard_and_rules import dashboard_queries

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")

# Grafana variables, as Grafana would expand them for "All".
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$flow": ".*", "$instance": ".*"}
# Panels that only show data after an event this test does not cause.
QUIET_PANELS = {"Database errors"}


def api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]


def firing(port: int) -> set[str]:
    return {a["labels"]["alertname"] for a in api(port, "alerts")["alerts"]
            if a["state"] == "firing"}


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout}s")


def live_config(tmp_path: Path, supervisor_port: int) -> Path:
    """The shipped config and rules, pointed at our supervisor, scraping every
    second, with each alert's `for:` at zero so a test need not wait minutes."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pgflow"]
    job.update(scrape_interval="1s", scrape_timeout="1s",
               static_configs=[{"targets": [f"127.0.0.1:{supervisor_port}"]}])
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "0s"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(tmp_path):
    processes: list[subprocess.Popen] = []

    def start(config: Path) -> int:
        port = free_port()
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
        )
        processes.append(proc)
        wait_until(lambda: _ready(port), 20, "Prometheus did not become ready")
        return port

    yield start
    for proc in processes:
        proc.terminate()
        proc.wait(10)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1):
            return True
    except OSError:
        return False


def test_dashboard_queries_return_data_and_alerts_fire(dsn, start_supervisor, prometheus, tmp_path):
    metrics_port = free_port()
    supervisor = start_supervisor(dsn, "--metrics-port", str(metrics_port),
                                  env={"PGFLOW_QUEUE_STATS_INTERVAL": "1"})
    port = prometheus(live_config(tmp_path, metrics_port))
    # Counters must be seen before the events, or their increase is lost to rate().
    wait_until(lambda: api(port, "query", query='up{job="pgflow"} == 1')["result"], 20,
               "Prometheus did not scrape the supervisor")
    time.sleep(2)

    with Client(dsn) as client:
        run_ids = []
        for second in range(10):
            run_ids += [client.start_flow("e2e_diamond", {"n": i}) for i in range(10)]
            run_ids += [client.start_flow("e2e_fail", second) for _ in range(3)]
            # Two crashes a second: well above the alert's one per minute.
            run_ids += [client.start_flow("e2e_crash", {"how": "kill"}) for _ in range(2)]
            time.sleep(1)
        for run_id in run_ids:
            client.wait(run_id, timeout=30)

        # PgflowOldestReadyTaskTooOld needs a task ready for 5 minutes that no
        # supervisor claims; deploy/prometheus/alerts_test.yml covers it.
        expected = {"PgflowTaskFailureRateHigh", "PgflowExecutorCrashLoop"}
        wait_until(lambda: expected <= firing(port), 30, f"alerts {expected} not firing")

        empty = []
        for title, query in dashboard_queries(json.loads(
                (ROOT / "grafana/dashboards/pgflow.json").read_text())):
            if query.startswith("label_values(") or title in QUIET_PANELS:
                continue
            for variable, value in GRAFANA_VARIABLES.items():
                query = query.replace(variable, value)
            if not api(port, "query", query=query)["result"]:
                empty.append(f"{title}: {query}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    supervisor.stop()
    wait_until(lambda: "PgflowNoLiveSupervisor" in firing(port), 30,
               "PgflowNoLiveSupervisor not firing after the supervisor stopped")
