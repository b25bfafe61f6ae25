"""`pgflow runs [--flow] [--status] [--since] [--limit]`: recent runs, newest first."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from pgflow.run import RUN_STATUSES
from supervisor.commands import common
from supervisor.commands.show_run import STATUS_STYLE

NAME = "runs"
HELP = "list runs, newest first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flow", help="only runs of this flow")
    parser.add_argument("--status", choices=RUN_STATUSES, help="only runs in this status")
    parser.add_argument("--since", type=common.since,
                        help="only runs started since: a duration ago (30m, 2h, 7d) or a date/time")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    common.add_database_option(parser)
    common.add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        runs = client.list_runs(flow=args.flow, status=args.status, since=args.since,
                                limit=args.limit)
    if args.json:
        common.print_json([common.as_dict(r) for r in runs])
        return 0
    console = common.console()
    if not runs:
        console.print("no runs match")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("run", "flow", "status", "started", "took", "error"):
        table.add_column(column, justify="right" if column == "took" else "left",
                         no_wrap=column != "error")
    for r in runs:
        where = f"{r.failed_step}: " if r.failed_step else ""
        table.add_row(str(r.run_id), r.flow_slug, Text(r.status, style=STATUS_STYLE.get(r.status, "")),
                      common.when(r.started_at), common.seconds(r.duration_s),
                      where + common.first_line(r.error, 60) if r.error else "")
    console.print(table)
    return 0
