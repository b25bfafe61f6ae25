"""SQL kept in .sql files, loaded once by name.

- pgflow/sql/queries/<name>.sql: what the Client reads (psycopg's named
  %(param)s placeholders).
- pgflow/sql/worker/<name>.sql: the worker protocol (claim, answer, release,
  heartbeat, ...), with PostgreSQL's own $1 placeholders and explicit casts,
  so the supervisor sends them through libpq as they are and drain() and
  tests through psycopg's RawCursor.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    """Return the text of pgflow/sql/queries/<name>.sql."""
    return resources.files("pgflow").joinpath("sql", "queries", f"{name}.sql").read_text()


@cache
def worker(name: str) -> str:
    """Return the text of pgflow/sql/worker/<name>.sql."""
    return resources.files("pgflow").joinpath("sql", "worker", f"{name}.sql").read_text()
