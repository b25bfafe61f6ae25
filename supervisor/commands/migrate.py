"""`pgflow migrate [--dry-run] [--roles]`: create or upgrade the pgflow schema."""

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
    parser.add_argument("--roles", action="store_true",
                        help="also create the roles pgflow_app and pgflow_worker when missing "
                             "(needs CREATEROLE; see deploy/README.md, 'Least privilege')")
    common.add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    conn = preflight.connect(args.database_url, "pgflow migrate")
    try:
        roles = migrations.missing_roles(conn) if args.roles else []
        if args.dry_run:
            names = [f"{m.version:04d}_{m.name}" for m in migrations.pending(conn)]
        else:
            names = migrations.migrate(conn, roles=args.roles)
    finally:
        conn.close()
    if args.json:
        document: dict[str, object] = {"dry_run": args.dry_run, "migrations": names}
        if args.roles:
            document["roles_created" if not args.dry_run else "roles_missing"] = roles
        common.print_json(document)
        return 0
    verb = "would create" if args.dry_run else "created"
    if roles:
        print(f"{verb} roles: {', '.join(roles)}")
    if not names:
        print("schema is up to date")
    else:
        print(("would apply: " if args.dry_run else "applied: ") + ", ".join(names))
    return 0
