"""`pgflow flows`: registered flows, their shape, options, conditions and
schedule (with the next tick), and their runs by status."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import psycopg.rows
from rich.table import Table

from pgflow import queries
from pgflow.schedule import Schedule, ScheduleError
from supervisor.commands import common

NAME = "flows"
HELP = "list registered flows: steps, options, conditions, schedules, runs by status"
OPTIONS = ("max_attempts", "base_delay", "timeout", "start_delay")
# Shown (and put in --json) only when a step has them, as in the flow's shape.
CONDITION_DEFAULTS = {"if": None, "if_not": None, "when_unmet": "skip", "when_exhausted": "fail"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_database_option(parser)
    common.add_json_option(parser)


def read(conn: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(queries.load("list_flows")).fetchall()
        steps = cur.execute(queries.load("list_steps")).fetchall()
    now = datetime.datetime.now(datetime.UTC)
    flows = []
    for row in rows:
        schedule = {k: row.pop(k) for k in ("cron", "timezone", "schedule_input", "catch_up",
                                            "last_tick_at")}
        flow = {**row, "schedule": _schedule(schedule, now) if schedule["cron"] else None}
        flow["steps"] = [_step(s) for s in steps if s["flow_slug"] == flow["flow_slug"]]
        flows.append(flow)
    return flows


def _step(row: dict[str, Any]) -> dict[str, Any]:
    step = {"slug": row["step_slug"], "type": row["step_type"], "depends_on": row["depends_on"],
            **{k: row[k] for k in OPTIONS}}
    if row["max_concurrency"] is not None:
        step["max_concurrency"] = row["max_concurrency"]
    conditions = {"if": row["if_pattern"], "if_not": row["if_not_pattern"],
                  "when_unmet": row["when_unmet"], "when_exhausted": row["when_exhausted"]}
    step.update({k: v for k, v in conditions.items() if v != CONDITION_DEFAULTS[k]})
    return step


def _schedule(row: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """The stored schedule, with the next tick the supervisors will start."""
    out = {"cron": row["cron"], "timezone": row["timezone"], "input": row["schedule_input"],
           "catch_up": row["catch_up"], "last_tick_at": row["last_tick_at"],
           "next_tick_at": None, "description": row["cron"]}
    try:
        schedule = Schedule(row["cron"], row["schedule_input"], row["timezone"], row["catch_up"])
    except ScheduleError:
        return out
    out["next_tick_at"] = schedule.next_after(max(row["last_tick_at"], now))
    out["description"] = schedule.explain()
    return out


def _step_text(step: dict[str, Any]) -> str:
    own = [f"{k}={step[k]:g}" for k in OPTIONS if step[k] is not None]
    if "max_concurrency" in step:
        own.append(f"max_concurrency={step['max_concurrency']}")
    own += [f"{k}={step[k]}" for k in ("when_unmet", "when_exhausted") if k in step]
    kind = " map" if step["type"] == "map" else ""
    after = f" after {', '.join(step['depends_on'])}" if step["depends_on"] else ""
    condition = "".join(f" {word} {common.compact_json(step[key], 60)}"
                        for key, word in (("if", "if"), ("if_not", "unless")) if key in step)
    return f"{step['slug']}{kind}{after}{condition}" + (f" ({', '.join(own)})" if own else "")


def _schedule_text(schedule: dict[str, Any] | None) -> str:
    if schedule is None:
        return "-"
    lines = [f"{schedule['cron']} ({schedule['timezone']})", schedule["description"]]
    if schedule["next_tick_at"] is not None:
        lines.append(f"next {common.when(schedule['next_tick_at'])}")
    if schedule["catch_up"]:
        lines.append("catches up")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        flows = read(client.connection())
    if args.json:
        common.print_json(flows)
        return 0
    console = common.console()
    if not flows:
        console.print("no flows registered")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False, show_lines=False)
    for column in ("flow", "steps", "options", "schedule", "runs"):
        table.add_column(column)
    for flow in flows:
        options = (f"attempts {flow['max_attempts']}, delay {flow['base_delay']:g}s, "
                   f"timeout {flow['timeout']:g}s")
        if flow["max_concurrency"] is not None:
            options += f", at most {flow['max_concurrency']} at once"
        runs = ", ".join(f"{n} {status}" for status, n in sorted(flow["runs"].items())) or "none"
        table.add_row(flow["flow_slug"], "\n".join(_step_text(s) for s in flow["steps"]),
                      options, _schedule_text(flow["schedule"]), runs)
    console.print(table)
    return 0
