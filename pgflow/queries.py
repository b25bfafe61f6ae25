"""SQL statements kept in pgflow/sql/queries/*.sql, loaded once by name."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    """Return the text of pgflow/sql/queries/<name>.sql."""
    return resources.files("pgflow").joinpath("sql", "queries", f"{name}.sql").read_text()
