"""Generate grafana/dashboards/pgflow.json, the dashboard users import or provision.

    python grafana/generate.py           # rewrite the JSON
    python grafana/generate.py --check   # exit 1 if the committed JSON is stale

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39, Grafana 10
and later); tests/unit/test_dashboard_and_rules.py checks that the committed
JSON equals this output and that every metric it queries is exported.

The data source is the `datasource` template variable, so the same JSON works
imported by hand and provisioned from files. `$flow` and `$instance` filter
every panel. Queue depth and age come from Postgres and every supervisor
reports the same value, so those panels take `max` across instances, never
`sum`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "pgflow.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'flow=~"$flow", instance=~"$instance"'  # series with a flow label
INST = 'instance=~"$instance"'  # series without one
RATE = "$__rate_interval"

Panel = dict[str, Any]


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def timeseries(
    title: str, description: str, unit: str, targets: list[tuple[str, str]], *, stack: bool = False
) -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 20 if stack else 0,
                    "showPoints": "never",
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
    }


Thresholds = list[tuple[float | None, str]]


def stat(title: str, description: str, unit: str, expr: str, thresholds: Thresholds) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"value": value, "color": color} for value, color in thresholds],
                },
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "auto",
        },
        "targets": [target(expr, "", "A")],
    }


def quantiles(
    metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> list[tuple[str, str]]:
    legend = " ".join("{{" + label + "}}" for label in by.split(", "))
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)} {legend}",
        )
        for q in qs
    ]


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


GREEN, YELLOW, RED = "green", "yellow", "red"

PANELS: list[tuple[Panel, int, int]] = [  # (panel, width, height); laid out left to right
    (row("Overview"), 24, 1),
    (stat("Supervisors", "Supervisors reporting metrics.", "none",
          f"count(pgflow_supervisor_info{{{INST}}})", [(None, RED), (1, GREEN)]), 4, 4),
    (stat("Database connected", "Lowest across supervisors: 0 means one lost Postgres.", "bool_yes_no",
          f"min(pgflow_database_connected{{{INST}}})", [(None, RED), (1, GREEN)]), 4, 4),
    (stat("Executors busy", "Share of executor children running a task.", "percentunit",
          f'sum(pgflow_executor_processes{{state="busy", {INST}}}) '
          f"/ sum(pgflow_executor_processes{{{INST}}})",
          [(None, GREEN), (0.8, YELLOW), (0.95, RED)]), 4, 4),
    (stat("Completed tasks/s", "Successful task attempts per second.", "ops",
          f"sum(rate(pgflow_tasks_completed_total{{{SEL}}}[{RATE}]))", [(None, GREEN)]), 4, 4),
    (stat("Failed attempts", "Failed attempts / finished attempts (retried ones included).", "percentunit",
          f"sum(rate(pgflow_tasks_failed_total{{{SEL}}}[{RATE}])) "
          f"/ sum(rate(pgflow_task_duration_seconds_count{{{SEL}}}[{RATE}]))",
          [(None, GREEN), (0.05, YELLOW), (0.2, RED)]), 4, 4),
    (stat("Oldest ready task", "Age of the oldest claimable task, all selected flows.", "s",
          f"max(pgflow_queue_oldest_age_seconds{{{SEL}}})", [(None, GREEN), (60, YELLOW), (300, RED)]), 4, 4),
    (row("Throughput and failures"), 24, 1),
    (timeseries("Task throughput", "Finished task attempts per second by flow; failures by reason.", "ops", [
        (f"sum by (flow) (rate(pgflow_tasks_completed_total{{{SEL}}}[{RATE}]))", "completed {{flow}}"),
        (f"sum by (flow, reason) (rate(pgflow_tasks_failed_total{{{SEL}}}[{RATE}]))",
         "failed {{flow}} ({{reason}})"),
    ]), 12, 8),
    (timeseries("Failure and timeout rates", "Share of finished attempts that failed or timed out, by flow.",
                "percentunit", [
        (f"sum by (flow) (rate(pgflow_tasks_failed_total{{{SEL}}}[{RATE}])) "
         f"/ sum by (flow) (rate(pgflow_task_duration_seconds_count{{{SEL}}}[{RATE}]))", "failed {{flow}}"),
        (f"sum by (flow) (rate(pgflow_tasks_timed_out_total{{{SEL}}}[{RATE}])) "
         f"/ sum by (flow) (rate(pgflow_task_duration_seconds_count{{{SEL}}}[{RATE}]))",
         "timed out {{flow}}"),
    ]), 12, 8),
    (timeseries("Claims and retries", "Tasks claimed, and failed attempts scheduled again.", "ops", [
        (f"sum by (flow) (rate(pgflow_tasks_claimed_total{{{SEL}}}[{RATE}]))", "claimed {{flow}}"),
        (f"sum by (flow) (rate(pgflow_tasks_retried_total{{{SEL}}}[{RATE}]))", "retried {{flow}}"),
    ]), 12, 8),
    (timeseries("Timeouts by step", "Attempts killed at their deadline, per second.", "ops", [
        (f"sum by (flow, step) (rate(pgflow_tasks_timed_out_total{{{SEL}}}[{RATE}]))", "{{flow}}/{{step}}"),
    ]), 12, 8),
    (row("Latency"), 24, 1),
    (timeseries("Task duration by flow", "Execution time of task attempts, all outcomes.", "s",
                quantiles("pgflow_task_duration_seconds", "flow", SEL)), 12, 8),
    (timeseries("Queue wait by flow", "From a task becoming claimable to a child starting it.", "s",
                quantiles("pgflow_task_queue_wait_seconds", "flow", SEL)), 12, 8),
    (timeseries("Task duration p95 by step", "Per step, to find the slow one.", "s",
                quantiles("pgflow_task_duration_seconds", "flow, step", SEL, (0.95,))), 12, 8),
    (timeseries("Run duration by status", "Start to finish of runs, by final status.", "s",
                quantiles("pgflow_run_duration_seconds", "status", SEL, (0.5, 0.95))), 12, 8),
    (row("Queue"), 24, 1),
    (timeseries("Ready tasks by flow", "Tasks claimable now (from Postgres; max over supervisors)", "short", [
        (f"max by (flow) (pgflow_queue_depth{{{SEL}}})", "{{flow}}"),
    ]), 12, 8),
    (timeseries("Oldest ready task by flow", "How long the oldest claimable task has waited.", "s", [
        (f"max by (flow) (pgflow_queue_oldest_age_seconds{{{SEL}}})", "{{flow}}"),
    ]), 12, 8),
    (row("Executors"), 24, 1),
    (timeseries("Executor processes", "Children by state, all selected supervisors.", "short", [
        (f"sum by (state) (pgflow_executor_processes{{{INST}}})", "{{state}}"),
    ], stack=True), 8, 8),
    (timeseries("Pool utilisation by supervisor", "Busy children / all children.", "percentunit", [
        (f'sum by (instance) (pgflow_executor_processes{{state="busy", {INST}}}) '
         f"/ sum by (instance) (pgflow_executor_processes{{{INST}}})", "{{instance}}"),
    ]), 8, 8),
    (timeseries("Tasks in flight", "Claimed tasks: running in a child, or prefetched.", "short", [
        (f"sum by (state) (pgflow_tasks_in_flight{{{INST}}})", "{{state}}"),
    ], stack=True), 8, 8),
    (timeseries("Executor restarts", "Children replaced, by reason (per interval).", "short", [
        (f"sum by (reason) (increase(pgflow_executor_restarts_total{{{INST}}}[{RATE}]))", "{{reason}}"),
    ]), 8, 8),
    (timeseries("Wake-ups", "What woke the loop to claim: notifications, polls, timers.", "ops", [
        (f"sum by (source) (rate(pgflow_wakeups_total{{{INST}}}[{RATE}]))", "{{source}}"),
    ]), 8, 8),
    (timeseries("Late answers ignored", "Answers the attempt fence rejected (expired, cancelled).", "ops", [
        (f"sum(rate(pgflow_late_answers_ignored_total{{{INST}}}[{RATE}]))", "late answers"),
    ]), 8, 8),
    (row("Database"), 24, 1),
    (timeseries("Round trip p99 by operation", "Database round-trip time per operation.", "s",
                quantiles("pgflow_db_roundtrip_seconds", "operation", INST, (0.99,))), 12, 8),
    (timeseries("Database errors", "Operations that raised, per second.", "ops", [
        (f"sum by (operation) (rate(pgflow_db_errors_total{{{INST}}}[{RATE}]))", "{{operation}}"),
    ]), 12, 8),
    (timeseries("Notification queue usage", "Share of Postgres' NOTIFY queue in use; a stuck "
                "listener pins it, and when it is full every commit that notifies fails.",
                "percentunit", [
        (f"max(pgflow_notification_queue_usage{{{INST}}})", "queue usage"),
    ]), 12, 8),
]  # fmt: skip


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def layout(panels: list[tuple[Panel, int, int]]) -> list[Panel]:
    placed, x, y, row_height = [], 0, 0, 0
    for panel_id, (panel, width, height) in enumerate(panels, start=1):
        if x + width > 24:
            x, y, row_height = 0, y + row_height, 0
        placed.append({"id": panel_id, "gridPos": {"x": x, "y": y, "w": width, "h": height}, **panel})
        x, row_height = x + width, max(row_height, height)
    return placed


def dashboard() -> dict[str, Any]:
    return {
        "uid": "pgflow-supervisor",
        "title": "pgflow",
        "description": "pgflow supervisors: throughput, failures, latency, queues, executors, database.",
        "tags": ["pgflow", "postgres", "workflows"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "links": [],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Data source",
                    "query": "prometheus",
                    "current": {},
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                    "hide": 0,
                },
                variable("instance", "Supervisor", "label_values(pgflow_supervisor_info, instance)"),
                variable("flow", "Flow", "label_values(pgflow_queue_depth, flow)"),
            ]
        },
        "panels": layout(PANELS),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python grafana/generate.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
