"""What the subcommands share: the database option, opening a Client after
the preflight checks, and printing (rich tables on a terminal, --json)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from pgflow import Client
from supervisor import preflight


def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=os.environ.get("PGFLOW_DATABASE_URL"),
                        help="Postgres connection string (default: $PGFLOW_DATABASE_URL)")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@contextlib.contextmanager
def client(args: argparse.Namespace, *, need_schema: bool = True) -> Iterator[Client]:
    """A Client on a database that answered and (by default) has the current schema;
    a preflight.Problem otherwise."""
    conn = preflight.connect(args.database_url, f"pgflow {args.command}")
    try:
        if need_schema:
            preflight.check_schema(conn)
    finally:
        conn.close()
    with Client(args.database_url, application_name=f"pgflow {args.command}") as c:
        yield c


def console() -> Console:
    return Console(soft_wrap=False)


def _default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, default=_default, indent=2)
    sys.stdout.write("\n")


def when(value: datetime.datetime | None) -> str:
    """A timestamp for a table: local time, to the second."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
