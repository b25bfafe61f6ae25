"""`pgflow retry RUN_ID`: resume a failed or cancelled run in place."""

from __future__ import annotations

import argparse

from supervisor.commands import common

NAME = "retry"
HELP = ("resume a failed or cancelled run in place: completed steps keep their outputs, "
        "failed and cancelled ones run again")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID")
    common.add_database_option(parser)
    common.add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        before = client.get_run(args.run_id)
        after = client.retry_run(before.run_id)
    again = [slug for slug, step in before.steps.items() if step.status in ("failed", "cancelled")]
    if args.json:
        common.print_json({"run_id": after.run_id, "flow_slug": after.flow_slug,
                           "status": after.status, "retry_count": after.retry_count,
                           "steps": again, "error": after.error})
    elif after.status == "started":
        print(f"run {after.run_id} ({after.flow_slug}) started again (retry {after.retry_count}); "
              f"runs again: {', '.join(again)}")
    else:
        step = f" (step {after.failed_step})" if after.failed_step else ""
        print(f"run {after.run_id} ({after.flow_slug}) was retried and is {after.status} again at "
              f"once{step}: {common.first_line(after.error, 200)}")
    return 0 if after.status in ("started", "completed") else 1
