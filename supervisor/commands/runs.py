"""`pgflow runs [--flow] [--status] [--since] [--tag k=v] [--limit]`: recent runs, newest first."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from pgflow.run import RUN_STATUSES
from pgflow.tags import parse_tag
from supervisor.commands import common
from supervisor.commands.show_run import STATUS_STYLE

NAME = "runs"
HELP = "list runs, newest first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flow", help="only runs of this flow")
    parser.add_argument("--status", choices=RUN_STATUSES, help="only runs in this status")
    parser.add_argument("--since", type=common.since,
                        help="only runs started since: a duration ago (30m, 2h, 7d) or a date/time")
    parser.add_argument("--tag", type=_tag, action="append", default=[], metavar="NAME=VALUE",
                        help="only runs with this tag (repeat: all of them)")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    common.add_database_option(parser)
    common.add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        runs = client.list_runs(flow=args.flow, status=args.status, since=args.since,
                                limit=args.limit, tags=dict(args.tag) or None)
    if args.json:
        common.print_json([common.as_dict(r) for r in runs])
        return 0
    console = common.console()
    if not runs:
        console.print("no runs match")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("run", "flow", "status", "started", "took", "tags", "error"):
        table.add_column(column, justify="right" if column == "took" else "left",
                         no_wrap=column not in ("error", "tags"))
    for r in runs:
        where = f"{r.failed_step}: " if r.failed_step else ""
        table.add_row(str(r.run_id), r.flow_slug, Text(r.status, style=STATUS_STYLE.get(r.status, "")),
                      common.when(r.started_at), common.seconds(r.duration_s),
                      tags_text(r.key, r.tags),
                      where + common.first_line(r.error, 60) if r.error else "")
    console.print(table)
    return 0


def _tag(text: str) -> tuple[str, str]:
    try:
        return parse_tag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tags_text(key: str | None, tags: dict[str, str]) -> str:
    """A run's key and tags for a table cell: "key=order-42 tenant=acme"."""
    parts = ([f"key={key}"] if key else []) + [f"{k}={v}" for k, v in sorted(tags.items())]
    return " ".join(parts)
