"""`pgflow migrate [--dry-run]`: create or upgrade the pgflow schema."""

from __future__ import annotations

import argparse

from pgflow import migrations
from supervisor import preflight
from supervisor.commands import common

NAME = "migrate"
HELP = "create or upgrade the pgflow schema"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_database_option(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="list the migrations that would be applied; change nothing")
    common.add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    conn = preflight.connect(args.database_url, "pgflow migrate")
    try:
        if args.dry_run:
            names = [f"{m.version:04d}_{m.name}" for m in migrations.pending(conn)]
        else:
            names = migrations.migrate(conn)
    finally:
        conn.close()
    if args.json:
        common.print_json({"dry_run": args.dry_run, "migrations": names})
    elif not names:
        print("schema is up to date")
    else:
        print(("would apply: " if args.dry_run else "applied: ") + ", ".join(names))
    return 0
