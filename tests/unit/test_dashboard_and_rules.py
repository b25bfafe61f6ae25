"""The Grafana dashboard and the Prometheus rules query only metrics the supervisor exports.

Also: the committed dashboard JSON is what grafana/generate.py produces, and,
where promtool is installed (Debian's `prometheus` package), the rules, their
unit tests, the scrape config and every dashboard expression pass promtool.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from supervisor.metrics import METRIC_PREFIX, Metrics
from tests.unit.test_metrics import exercise_every_method

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "pgflow.json"
PROMETHEUS = ROOT / "deploy" / "prometheus"
METRIC_NAME = re.compile(rf"\b{METRIC_PREFIX}[A-Za-z0-9_]+")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", ROOT / "grafana" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_queries(node: Any, where: str = "dashboard") -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target (`expr`) and templating query (`definition`)."""
    if isinstance(node, dict):
        title = node.get("title") or node.get("name") or where
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield title, value
            else:
                yield from dashboard_queries(value, title)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_queries(item, where)


def alert_expressions(text: str) -> dict[str, str]:
    """{alert name: expr} from a Prometheus rules file."""
    rules = yaml.safe_load(text)
    return {r["alert"]: " ".join(r["expr"].split()) for g in rules["groups"] for r in g["rules"]}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    metrics = Metrics({"version": "test"})
    exercise_every_method(metrics)
    names = {
        line.split("{")[0].split(" ")[0]
        for line in metrics.render().decode().splitlines()
        if line and not line.startswith("#")
    }
    assert names == metrics.metric_names()
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def alerts() -> dict[str, str]:
    return alert_expressions((PROMETHEUS / "alerts.yml").read_text())


def unexported(queries: list[tuple[str, str]], exported: set[str]) -> list[str]:
    return [
        f"{where}: {name}"
        for where, query in queries
        for name in METRIC_NAME.findall(query)
        if name not in exported
    ]


def test_committed_dashboard_is_the_generators_output() -> None:
    assert DASHBOARD.read_text() == load_generator().render(), "run: python grafana/generate.py"


def test_dashboard_queries_only_exported_metrics(dashboard: dict[str, Any], exported: set[str]) -> None:
    queries = list(dashboard_queries(dashboard))

    assert len(queries) >= 30
    assert unexported(queries, exported) == []


def test_dashboard_variables_and_datasource(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}

    assert variables["flow"]["definition"] == "label_values(pgflow_queue_depth, flow)"
    assert variables["datasource"]["type"] == "datasource"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert all(t["datasource"]["uid"] == "${datasource}" for p in panels for t in p["targets"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_query_only_exported_metrics(alerts: dict[str, str], exported: set[str]) -> None:
    text = (PROMETHEUS / "alerts.yml").read_text()

    assert len(alerts) == text.count("- alert:")
    assert {"PgflowTaskFailureRateHigh", "PgflowOldestReadyTaskTooOld", "PgflowNoLiveSupervisor",
            "PgflowExecutorCrashLoop"} <= alerts.keys()  # fmt: skip
    assert "pgflow_queue_oldest_age_seconds" in alerts["PgflowOldestReadyTaskTooOld"]
    assert 'reason="crash"' in alerts["PgflowExecutorCrashLoop"]
    assert unexported(list(alerts.items()), exported) == []


def test_the_sync_check_catches_a_misspelt_metric(exported: set[str]) -> None:
    queries = [("panel", "sum(rate(pgflow_task_completed_total[5m]))"), ("alert", "pgflow_queue_depth > 1")]
    assert unexported(queries, exported) == ["panel: pgflow_task_completed_total"]


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs_promtool
def test_promtool_accepts_rules_config_and_alert_unit_tests() -> None:
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", "alerts.yml")
    assert "valid prometheus config" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


@needs_promtool
def test_every_dashboard_expression_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    # promtool has no "check this expression" command, so the expressions become recording rules.
    grafana_variables = {"$__rate_interval": "1m", "$flow": ".*", "$instance": ".*"}
    rules = []
    for i, (_, query) in enumerate(dashboard_queries(dashboard)):
        if query.startswith("label_values("):
            continue  # Grafana syntax, not PromQL
        for variable, value in grafana_variables.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"unknown Grafana variable in {query}"
        rules.append({"record": f"pgflow:dashboard_query_{i}", "expr": query})
    # JSON is YAML: no YAML writer needed.
    (tmp_path / "dashboard_rules.yml").write_text(
        json.dumps({"groups": [{"name": "dashboard", "rules": rules}]})
    )

    assert f"SUCCESS: {len(rules)} rules found" in promtool(
        "check", "rules", "dashboard_rules.yml", cwd=tmp_path
    )
