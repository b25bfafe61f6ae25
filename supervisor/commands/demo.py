"""`pgflow demo`: the argument parsing; the demo itself is supervisor.demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from supervisor.commands import common
from supervisor.preflight import EXIT_CONFIG, Problem

NAME = "demo"
HELP = ("run a batch of the example orders flow through a real supervisor "
        "(embedded Postgres unless a database is given)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_database_option(parser)
    parser.add_argument("--runs", type=int, default=20, help="runs to start; exits after they finish")
    parser.add_argument("--processes", type=int, default=2, help="executor processes (default 2)")
    parser.add_argument("--data-dir", type=Path, default=Path(".pgflow/demo"),
                        help="embedded Postgres data and the supervisor log (default .pgflow/demo, "
                        "kept between runs)")
    parser.add_argument("--clean", action="store_true",
                        help="stop the embedded Postgres and remove --data-dir, then exit")


def run(args: argparse.Namespace) -> int:
    from supervisor import demo, preflight

    if args.clean:
        return demo.clean(args.data_dir)
    if args.runs < 1 or args.processes < 1:
        raise Problem("--runs and --processes must be at least 1", EXIT_CONFIG)
    if args.database_url:
        preflight.connect(args.database_url, "pgflow demo").close()
    return demo.run(runs=args.runs, processes=args.processes, data_dir=args.data_dir,
                    database_url=args.database_url)
