"""`pgflow flows`: registered flows, their shape and options, and their runs by status."""

from __future__ import annotations

import argparse
from typing import Any

import psycopg.rows
from rich.table import Table

from pgflow import queries
from supervisor.commands import common

NAME = "flows"
HELP = "list registered flows: steps, options, runs by status"
OPTIONS = ("max_attempts", "base_delay", "timeout", "start_delay")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_database_option(parser)
    common.add_json_option(parser)


def read(conn: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        flows = cur.execute(queries.load("list_flows")).fetchall()
        steps = cur.execute(queries.load("list_steps")).fetchall()
    for flow in flows:
        flow["steps"] = [
            {"slug": s["step_slug"], "type": s["step_type"], "depends_on": s["depends_on"],
             **{k: s[k] for k in OPTIONS}}
            for s in steps if s["flow_slug"] == flow["flow_slug"]
        ]
    return flows


def _step_text(step: dict[str, Any]) -> str:
    own = ", ".join(f"{k}={step[k]:g}" for k in OPTIONS if step[k] is not None)
    kind = " map" if step["type"] == "map" else ""
    after = f" after {', '.join(step['depends_on'])}" if step["depends_on"] else ""
    return f"{step['slug']}{kind}{after}" + (f" ({own})" if own else "")


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
    for column in ("flow", "steps", "options", "runs"):
        table.add_column(column)
    for flow in flows:
        options = (f"attempts {flow['max_attempts']}, delay {flow['base_delay']:g}s, "
                   f"timeout {flow['timeout']:g}s")
        runs = ", ".join(f"{n} {status}" for status, n in sorted(flow["runs"].items())) or "none"
        table.add_row(flow["flow_slug"], "\n".join(_step_text(s) for s in flow["steps"]),
                      options, runs)
    console.print(table)
    return 0
