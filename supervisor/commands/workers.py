"""`pgflow workers`: live supervisors (a heartbeat within three intervals) and
those stopped or silent recently."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import psycopg.rows
from rich.table import Table
from rich.text import Text

from pgflow import queries
from supervisor.commands import common

NAME = "workers"
HELP = "list live supervisors and the ones stopped recently"
STATE_STYLE = {"live": "green", "silent": "red", "stopped": "dim"}
LEFT = ("state", "host", "flows", "started", "last heartbeat", "stopped")


def executors(worker: dict[str, Any]) -> str:
    """"1/2 busy" from what a supervisor reports ("-" for drain() callers)."""
    if worker["executors"] is None:
        return "-"
    return f"{worker['executors_busy']}/{worker['executors']} busy"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heartbeat-interval", type=float, default=5.0,
                        help="the supervisors' heartbeat interval in seconds (default 5): live "
                        "means a heartbeat within three of them")
    parser.add_argument("--recent", type=common.duration, default=datetime.timedelta(hours=1),
                        help="also list workers stopped or silent this recently (default 1h)")
    common.add_database_option(parser)
    common.add_json_option(parser)


def read(conn: Any, interval: float, recent: datetime.timedelta) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(queries.load("list_workers"), {
            "interval": interval, "recent": recent.total_seconds()}).fetchall()


def run(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        rows = read(client.connection(), args.heartbeat_interval, args.recent)
    if args.json:
        common.print_json(rows)
        return 0
    console = common.console()
    if not rows:
        console.print("no workers live or seen recently")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("state", "host", "pid", "flows", "started", "last heartbeat", "stopped",
                   "executors", "tasks held", "attempts/s"):
        table.add_column(column, justify="left" if column in LEFT else "right")
    for w in rows:
        table.add_row(Text(w["state"], style=STATE_STYLE.get(w["state"], "")), w["hostname"],
                      str(w["pid"]), ", ".join(w["flows"]), common.when(w["started_at"]),
                      common.ago(w["heartbeat_age_s"]), common.when(w["stopped_at"]),
                      executors(w), str(w["tasks_held"]), rate(w["attempts_per_second"]))
    console.print(table)
    return 0
