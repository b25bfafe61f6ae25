"""`pgflow prune --older-than 7d [--dry-run]`: delete finished runs in small batches."""

from __future__ import annotations

import argparse
import sys

from pgflow import retention
from supervisor.commands import common

NAME = "prune"
EXIT_INTERRUPTED = 130
HELP = "delete finished runs older than a cutoff (with their steps and tasks), in small batches"
DESCRIPTION = (
    "Delete runs that completed, failed or were cancelled more than --older-than ago, with their "
    "step states and tasks, a batch of runs per transaction (runs another transaction holds are "
    "skipped, never waited for). Runs still started are never touched. Supervisors can do this "
    "on their own with --retention.")


def batch_size(text: str) -> int:
    """argparse type: 1 to retention.MAX_BATCH_SIZE runs."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= retention.MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a whole number of runs from 1 to {retention.MAX_BATCH_SIZE}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than", type=common.duration, required=True,
                        help="prune runs that finished this long ago or more (30m, 12h, 7d, 4w)")
    parser.add_argument("--dry-run", action="store_true",
                        help="count what would be pruned; delete nothing")
    parser.add_argument("--batch-size", type=batch_size, default=retention.DEFAULT_BATCH_SIZE,
                        help=f"runs per transaction (default {retention.DEFAULT_BATCH_SIZE})")
    common.add_database_option(parser)
    common.add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        try:
            result = client.prune(args.older_than, dry_run=args.dry_run,
                                  batch_size=args.batch_size)
        except KeyboardInterrupt:
            print("pgflow prune: interrupted; the batches done so far stay deleted (each was its "
                  "own transaction), the one under way was rolled back", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.json:
        common.print_json({**common.as_dict(result),
                           "older_than_s": args.older_than.total_seconds()})
        return 0
    what = f"{result.runs:,} runs ({result.tasks:,} tasks) that finished before " \
           f"{common.when(result.cutoff)}"
    if result.dry_run:
        print(f"would prune {what}")
    elif result.runs == 0:
        print(f"nothing to prune: no run finished before {common.when(result.cutoff)}")
    else:
        print(f"pruned {what}, in {result.batches} batches of up to {args.batch_size} runs "
              f"({common.seconds(result.seconds)}; longest batch "
              f"{common.seconds(result.longest_batch_seconds)})")
    return 0
