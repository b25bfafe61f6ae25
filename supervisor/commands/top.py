"""`pgflow top`: a live view of the whole system, refreshed every second.

Throughput (attempts per second, as the live supervisors report it with
their heartbeats), runs by status, the queue, the slowest and the most
failing steps, and the live supervisors with their executors. On a
terminal it redraws in place (rich, without its refresh thread); otherwise
it prints one line per refresh; `--json` prints one snapshot and exits.

Every read is bounded: runs through the index on their start time within
`--window`, steps over the tasks of the latest `--sample` runs of it, the
queue (unfinished tasks only) and the worker rows.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg.rows
from rich.console import Console
from rich.live import Live
from rich.text import Text

from pgflow import queries
from supervisor.commands import common, top_view, workers
from supervisor.commands.top_view import Snapshot

NAME = "top"
HELP = ("a live view: throughput, runs by status, the queue, the slowest and most failing "
        "steps, live supervisors and their executors")
EXIT_INTERRUPTED = 130




def _positive(kind: type[int] | type[float], allow_zero: bool = False) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a {'whole ' if kind is int else ''}number "
                f"{'>= 0' if allow_zero else '> 0'}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=common.duration, default=datetime.timedelta(minutes=5),
                        help="runs and steps of runs started this recently (default 5m)")
    parser.add_argument("--sample", type=_positive(int), default=1000,
                        help="step figures come from the latest this many runs of the window "
                        "(default 1000)")
    parser.add_argument("--interval", type=_positive(float), default=1.0,
                        help="seconds between refreshes (default 1)")
    parser.add_argument("--count", type=_positive(int, allow_zero=True), default=0,
                        help="stop after this many refreshes (default 0: until Ctrl-C)")
    parser.add_argument("--heartbeat-interval", type=_positive(float), default=5.0,
                        help="the supervisors' heartbeat interval in seconds (default 5): live "
                        "means a heartbeat within three of them")
    common.add_database_option(parser)
    common.add_json_option(parser)


def read(conn: psycopg.Connection, window: datetime.timedelta, sample: int,
         heartbeat_interval: float, top: int = 5) -> Snapshot:
    seconds = window.total_seconds()
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        now = cur.execute("select now() as now").fetchone()["now"]  # type: ignore[index]
        runs = cur.execute(queries.load("top_runs"), {"window": seconds}).fetchall()
        queue = cur.execute(queries.load("top_queue")).fetchall()
        steps = cur.execute(queries.load("top_steps"),
                            {"window": seconds, "runs": sample}).fetchall()
    live = [w for w in workers.read(conn, heartbeat_interval, datetime.timedelta(0))
            if w["state"] == "live"]
    rates = [w["attempts_per_second"] for w in live if w["attempts_per_second"] is not None]
    slowest = sorted((s for s in steps if s["p95_s"] is not None),
                     key=lambda s: s["p95_s"], reverse=True)[:top]
    failing = sorted((s for s in steps if s["failed_attempts"]),
                     key=lambda s: (s["failed_attempts"], s["failed_tasks"]), reverse=True)[:top]
    return Snapshot(
        at=now, window_s=seconds, sample_runs=sample,
        attempts_per_second=sum(rates) if rates else None,
        runs={r["status"]: r["runs"] for r in runs},
        runs_finished_last_minute=sum(r["finished_last_minute"] for r in runs),
        queue=queue, slowest_steps=slowest, failing_steps=failing,
        supervisors=[{k: w[k] for k in top_view.SUPERVISOR_KEYS} for w in live],
    )


def run(args: argparse.Namespace) -> int:
    with common.client(args) as client:

        def snapshot() -> Snapshot:
            # connection() reopens a connection that broke since the last refresh.
            return read(client.connection(), args.window, args.sample, args.heartbeat_interval)

        if args.json:
            common.print_json(common.as_dict(snapshot()))
            return 0
        try:
            follow(snapshot, args.interval, args.count)
        except KeyboardInterrupt:
            return 0
    return 0


def follow(snapshot: Callable[[], Snapshot], interval: float, count: int,
           console: Console | None = None) -> None:
    """Show a snapshot every `interval` seconds (`count` times; 0: until Ctrl-C)."""
    console = console or common.console()
    live = Live(console=console, auto_refresh=False, screen=False) if console.is_terminal else None
    if live is not None:
        live.start()
    shown = 0
    try:
        while True:
            started = time.monotonic()
            try:
                current: Snapshot | str = snapshot()
            except psycopg.OperationalError as exc:  # keep watching: the server may come back
                current = f"cannot read the database ({str(exc).strip()}); trying again"
            if isinstance(current, str):
                if live is not None:
                    live.update(Text(current, style="red"), refresh=True)
                else:
                    console.print(current, highlight=False, markup=False)
            elif live is not None:
                live.update(top_view.render(current), refresh=True)
            else:
                console.print(top_view.line(current), highlight=False, markup=False)
            shown += 1
            if count and shown >= count:
                return
            time.sleep(max(interval - (time.monotonic() - started), 0.0))
    finally:
        if live is not None:
            live.stop()
