"""`pgflow start FLOW --input JSON|@file [--run-id ID] [--wait]`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from pgflow import Client, Run
from supervisor.commands import common, show_run
from supervisor.preflight import EXIT_CONFIG, Problem

NAME = "start"
HELP = "start a run of a flow; with --wait, watch its steps and print its output or error"
POLL_SECONDS = 0.25
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flow", metavar="FLOW")
    parser.add_argument("--input", default="null",
                        help="the run's input: JSON, or @path to a JSON file (default: null)")
    parser.add_argument("--run-id", help="your own run id (a UUID): starting it twice starts one run")
    parser.add_argument("--wait", action="store_true",
                        help="watch the run until it finishes; exit 0 if it completed, 1 otherwise")
    parser.add_argument("--timeout", type=float, default=None,
                        help="with --wait: give up after this many seconds (exit 1)")
    common.add_database_option(parser)
    common.add_json_option(parser)


def parse_input(text: str) -> Any:
    source = "--input"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise Problem(f"--input {text}: cannot read {path}: {exc.strerror}", EXIT_CONFIG) from None
        source = f"--input @{path}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(f"{source} is not JSON ({exc}); quote strings: --input '\"text\"'",
                      EXIT_CONFIG) from None
    except RecursionError:
        raise Problem(f"{source} nests deeper than Python can read; flatten it",
                      EXIT_CONFIG) from None


def watch(client: Client, run_id: Any, console: Console, timeout: float | None) -> Run:
    """Poll the run until it finishes, showing its steps (live on a terminal,
    a line per change otherwise); TimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    if live is not None:
        live.start()
    try:
        while True:
            current = client.get_run(run_id)
            if live is not None:
                header = Text(f"run {current.run_id} ({current.flow_slug}): {current.status}")
                live.update(Group(header, show_run.steps_table(current)), refresh=True)
            else:
                line = " ".join(f"{slug}={step.status}" for slug, step in current.steps.items())
                if line != last:
                    console.print(f"{current.status}: {line}", highlight=False, markup=False)
                    last = line
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {current.run_id} is still {current.status} after "
                                   f"{timeout:g}s")
            time.sleep(POLL_SECONDS)
    finally:
        if live is not None:
            live.stop()


def run(args: argparse.Namespace) -> int:
    value = parse_input(args.input)
    with common.client(args) as client:
        run_id = client.start_flow(args.flow, value, run_id=args.run_id)
        if not args.wait:
            if args.json:
                common.print_json({"run_id": run_id})
            else:
                print(run_id)
            return 0
        console = common.console()
        if not args.json:
            console.print(f"started run {run_id}", highlight=False)
        try:
            finished = watch(client, run_id, Console(stderr=True) if args.json else console,
                             args.timeout)
        except KeyboardInterrupt:
            print(f"\nstopped watching; the run goes on: pgflow run {run_id}")
            return EXIT_INTERRUPTED
        except TimeoutError as exc:
            print(f"pgflow start: {exc}; the run goes on: pgflow run {run_id}")
            return 1
        tasks = show_run.read_tasks(client, finished)
    if args.json:
        common.print_json(show_run.document(finished, tasks))
    else:
        show_run.render(console, finished, tasks)
    return 0 if finished.status == "completed" else 1
