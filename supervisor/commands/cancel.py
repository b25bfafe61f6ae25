"""`pgflow cancel RUN_ID`: cancel a run; supervisors kill the executors running its tasks."""

from __future__ import annotations

import argparse

from supervisor.commands import common

NAME = "cancel"
HELP = "cancel a run (queued tasks are cancelled, running handlers are killed by their supervisors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID")
    common.add_database_option(parser)
    common.add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        before = client.get_run(args.run_id)
        after = client.cancel_run(before.run_id)
    cancelled = before.status == "started" and after.status == "cancelled"
    if args.json:
        common.print_json({"run_id": after.run_id, "status": after.status, "cancelled": cancelled})
    elif cancelled:
        print(f"run {after.run_id}: cancelled")
    else:
        print(f"run {after.run_id} was already {after.status}; nothing to cancel")
    return 0 if after.status == "cancelled" else 1
