"""What the subcommands share: the database option, opening a Client after
the preflight checks, and printing (rich tables on a terminal, --json)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from pgflow import Client
from supervisor import durations, preflight


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
            preflight.check_schema(conn, hint="run `pgflow migrate`")
    finally:
        conn.close()
    with Client(args.database_url, application_name=f"pgflow {args.command}") as c:
        yield c


def console() -> Console:
    """Rich output; when stdout is not a terminal, wide enough that tables are not cut."""
    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=250, no_color=True)


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


def duration(text: str) -> datetime.timedelta:
    """argparse type: "90s", "15m", "2h", "7d", "1w"."""
    try:
        return datetime.timedelta(seconds=durations.parse_seconds(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def since(text: str) -> datetime.datetime | datetime.timedelta:
    """argparse type: a duration (that long ago) or an ISO date/time (local time if no zone)."""
    if durations.is_duration(text):
        return duration(text)
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor a date/time (2026-01-31T12:00)"
        ) from None
    return value if value.tzinfo else value.astimezone()


def first_line(text: str | None, width: int = 80) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def compact_json(value: Any, width: int = 200) -> str:
    text = json.dumps(value, default=_default)
    return text if len(text) <= width else text[: width - 1] + "…"


def as_dict(value: Any) -> dict[str, Any]:
    return dataclasses.asdict(value)


def ago(value: float | None) -> str:
    """Seconds elapsed, for people: "4 s ago", "12 min ago", "3.5 h ago"."""
    if value is None:
        return "-"
    if value < 90:
        return f"{value:.0f} s ago"
    if value < 5400:
        return f"{value / 60:.0f} min ago"
    return f"{value / 3600:.1f} h ago"
