"""The `pgflow` command: the parser and the dispatch; each subcommand is a
module of supervisor/commands/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

import psycopg

import pgflow
from pgflow import PgflowError
from supervisor.commands import (
    cancel,
    demo,
    flows,
    migrate,
    prune,
    retry,
    runs,
    show_run,
    start,
    supervise,
    top,
    workers,
)
from supervisor.preflight import EXIT_CONFIG, Problem
from supervisor.redact import mask_password

EXIT_USAGE = 2
# Kept for callers of the old name; see supervisor.preflight for what 78 means.
__all__ = ["EXIT_CONFIG", "EXIT_USAGE", "main"]

COMMANDS: list[ModuleType] = [
    demo, supervise, migrate, flows, start, runs, show_run, cancel, retry, prune, workers, top]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgflow", description="A Postgres-native DAG workflow engine.")
    parser.add_argument("--version", action="version", version=f"pgflow {pgflow.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        sub = commands.add_parser(module.NAME, help=module.HELP,
                                  description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except Problem as problem:
        print(f"pgflow {args.command}: {problem}", file=sys.stderr)
        return problem.exit_code
    except PgflowError as exc:
        print(f"pgflow {args.command}: {mask_password(str(exc))}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:  # one line, not a traceback (a missing right, a lost server)
        reason = (exc.diag.message_primary if exc.diag else None) or str(exc).strip()
        print(f"pgflow {args.command}: the database refused: {mask_password(reason)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
